// Every supported checkpoint layout, written by the test and loaded by toga, gives the logits of an
// independent float64 reference; stories260K reproduces its published greedy sample.
#include <gtest/gtest.h>

#include <fstream>
#include <regex>

#include "eval/perplexity.h"
#include "io/checkpoint.h"
#include "model/generate.h"
#include "model/runtime_export.h"
#include "model/model.h"
#include "reference_llama.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/half.h"

using namespace toga;
using namespace toga::test;

namespace {

// Writes `w` as an HF directory in `dtype` and rounds `w` to what the file holds, so the reference
// sees the same weights.
void write_checkpoint(const std::string& dir, const ModelConfig& c, ReferenceWeights& w, DType dtype,
                      uint64_t shard_bytes) {
  std::vector<std::vector<uint8_t>> storage;
  std::vector<TensorToWrite> tensors;
  for (auto& [name, t] : w.t) {
    auto& values = t.second;
    std::vector<uint8_t> bytes(values.size() * dtype_size(dtype));
    for (size_t i = 0; i < values.size(); ++i) {
      if (dtype == DType::BF16) {
        const uint16_t b = float_to_bf16(values[i]);
        values[i] = bf16_to_float(b);
        std::memcpy(bytes.data() + 2 * i, &b, 2);
      } else {
        std::memcpy(bytes.data() + 4 * i, &values[i], 4);
      }
    }
    storage.push_back(std::move(bytes));
    tensors.push_back({name, dtype, t.first, storage.back().data()});
  }
  HFWriteOptions opts;
  opts.max_shard_bytes = shard_bytes;
  write_hf_checkpoint(dir, c, tensors, opts);
}

// Rewrites a checkpoint's config.json as transformers v5 saves it: every RoPE setting inside
// `rope_parameters` (no top-level rope_theta, no rope_scaling), `dtype` for torch_dtype, and for
// Qwen2/Qwen3 the explicit `layer_types`.
void rewrite_config_as_v5(const std::string& dir, const ModelConfig& c) {
  const std::string path = dir + "/config.json";
  auto j = nlohmann::json::parse(read_text_file(path));
  nlohmann::json rope = {{"rope_theta", c.rope_theta}, {"rope_type", "default"}};
  const auto& s = c.rope_scaling;
  if (s.type == "llama3") {
    rope = {{"rope_theta", c.rope_theta}, {"rope_type", "llama3"}, {"factor", s.factor},
            {"low_freq_factor", s.low_freq_factor}, {"high_freq_factor", s.high_freq_factor},
            {"original_max_position_embeddings", s.original_max_position_embeddings}};
  } else if (s.type == "linear") {
    rope = {{"rope_theta", c.rope_theta}, {"rope_type", "linear"}, {"factor", s.factor}};
  }
  j.erase("rope_theta");
  j.erase("rope_scaling");
  j["rope_parameters"] = rope;
  j["dtype"] = j.at("torch_dtype");
  j.erase("torch_dtype");
  if (c.family == Family::Qwen2 || c.family == Family::Qwen3) {
    j["layer_types"] = std::vector<std::string>(c.num_hidden_layers, "full_attention");
    j["use_sliding_window"] = false;
    j["max_window_layers"] = 28;
    // v5 itself writes null; Qwen2.5's files keep a value that use_sliding_window switches off.
    j["sliding_window"] = c.family == Family::Qwen2 ? nlohmann::json(4096) : nlohmann::json();
  }
  j["transformers_version"] = "5.25.0";
  write_text_atomically(path, j.dump(2));
}

double max_abs_diff(const torch::Tensor& logits, const std::vector<Vec>& ref) {
  const auto l = logits.to(torch::kFloat64).contiguous();
  const double* p = l.data_ptr<double>();
  double m = 0;
  for (size_t t = 0; t < ref.size(); ++t)
    for (size_t v = 0; v < ref[t].size(); ++v) m = std::max(m, std::abs(p[t * ref[t].size() + v] - ref[t][v]));
  return m;
}

}  // namespace

TEST(Checkpoints, EveryLayoutMatchesTheFloat64Reference) {
  ScratchDir dir;
  struct Case {
    std::string name;
    ModelConfig config;
    bool v5_layout = false;  // config.json as transformers v5 writes it
  };
  std::vector<Case> cases;
  auto llama = tiny_config(Family::Llama);
  cases.push_back({"llama_gqa_untied", llama});
  auto tied = llama;
  tied.tie_word_embeddings = true;
  cases.push_back({"llama_tied", tied});
  auto l3 = llama;
  l3.rope_theta = 500000;
  l3.rope_scaling.type = "llama3";
  l3.rope_scaling.factor = 32;
  l3.rope_scaling.original_max_position_embeddings = 16;
  cases.push_back({"llama3_rope_scaling", l3});
  cases.push_back({"mistral", tiny_config(Family::Mistral)});
  cases.push_back({"qwen2_biases", tiny_config(Family::Qwen2)});
  cases.push_back({"qwen3_qk_norm", tiny_config(Family::Qwen3)});
  // The v5 layout with settings that differ from every default, so a RoPE read wrongly shows.
  auto l3_v5 = l3;
  l3_v5.rope_scaling.factor = 8;
  l3_v5.rope_scaling.low_freq_factor = 2;
  l3_v5.rope_scaling.high_freq_factor = 8;
  cases.push_back({"llama3_gqa_v5", l3_v5, true});
  auto linear_v5 = llama;
  linear_v5.rope_theta = 50000;
  linear_v5.rope_scaling.type = "linear";
  linear_v5.rope_scaling.factor = 4;
  cases.push_back({"llama_linear_v5", linear_v5, true});
  for (Family f : {Family::Qwen2, Family::Qwen3, Family::Mistral}) {
    auto c = tiny_config(f);
    c.rope_theta = 1000000;
    cases.push_back({std::string(family_name(f)) + "_v5", c, true});
  }
  int seed = 100;
  for (auto& cs : cases) {
    for (DType dtype : {DType::F32, DType::BF16}) {
      for (uint64_t shard : {uint64_t(0) - 1, uint64_t(20000)}) {  // one file, then several shards
        SCOPED_TRACE(cs.name + (dtype == DType::BF16 ? " bf16" : " fp32") + (shard < 1000000 ? " sharded" : ""));
        auto w = random_weights(cs.config, ++seed);
        const std::string path = dir / (cs.name + std::to_string(seed));
        write_checkpoint(path, cs.config, w, dtype, shard);
        if (cs.v5_layout) rewrite_config_as_v5(path, cs.config);
        EXPECT_EQ(std::filesystem::exists(path + "/model.safetensors.index.json"), shard < 1000000);
        const Checkpoint ck = open_checkpoint(path);
        EXPECT_EQ(ck.config.architecture, cs.config.architecture);
        EXPECT_EQ(ck.config.rope_theta, cs.config.rope_theta);
        EXPECT_EQ(ck.config.rope_scaling.type, cs.config.rope_scaling.type);
        EXPECT_EQ(ck.config.sliding_window, cs.config.sliding_window);
        const Model m = load_model(ck);
        std::vector<int> ids = {3, 17, 5, 60, 2, 9, 33, 41, 7};
        std::vector<int64_t> ids64(ids.begin(), ids.end());
        torch::NoGradGuard ng;
        const auto logits = m.forward(torch::tensor(ids64).unsqueeze(0))[0];
        // The reference gets the intended config, not what toga read from the file.
        EXPECT_LT(max_abs_diff(logits, reference_forward(cs.config, w, ids)), 2e-4);
      }
    }
  }
}

TEST(Checkpoints, Stories260KReproducesItsPublishedGreedySample) {
  TOGA_REQUIRE_FILE(stories260k_path());
  // The model card's sample is the ground truth from llama2.c's run.c (temperature 0, 256 steps).
  const std::string card = read_text_file(shared_path("data/models/stories260K/stories260K.md"));
  const auto start = card.find("-t 0.0\n");
  ASSERT_NE(start, std::string::npos);
  const auto text_begin = start + std::strlen("-t 0.0\n");
  const std::string expected = card.substr(text_begin, card.find("\n```", text_begin) - text_begin);
  ASSERT_GT(expected.size(), 500u);

  const Checkpoint ck = open_checkpoint(stories260k_path());
  const Model m = load_model(ck);
  const auto tok = load_tokenizer(stories260k_path());
  SamplingOptions greedy;
  greedy.max_new_tokens = 256;  // run.c: 256 steps, each one forward and one sampled token
  greedy.stop_ids = {tok->bos_id};
  const auto ids = generate(m, {tok->bos_id}, greedy);
  EXPECT_EQ(tok->decode(ids), expected);
  // The libtorch-free runtime forward (what `toga generate` runs by default) writes the same story.
  EXPECT_EQ(tok->decode(generate(*export_runtime(m), {tok->bos_id}, greedy)), expected);
}

TEST(Checkpoints, ConvertedStories260KHasIdenticalLogits) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  const std::string out = dir / "stories-hf";
  const std::string cmd = std::string(TOGA_CLI) + " convert " + stories260k_path() + " " + out + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const Model a = load_model(open_checkpoint(stories260k_path()));
  const Model b = load_model(open_checkpoint(out));
  torch::NoGradGuard ng;
  const auto ids = torch::randint(512, {2, 64}, torch::kLong);
  EXPECT_TRUE(torch::equal(a.forward(ids), b.forward(ids)));
  // The bundled tokenizer encodes like the original.
  const auto ta = load_tokenizer(stories260k_path()), tb = load_tokenizer(out);
  const std::string s = "Once upon a time, Lily found a shiny red ball.";
  EXPECT_EQ(ta->encode(s), tb->encode(s));
}

TEST(Checkpoints, KLDOfAModelAgainstItselfIsZero) {
  TOGA_REQUIRE_FILE(stories260k_path());
  const Model m = load_model(open_checkpoint(stories260k_path()));
  std::vector<int> tokens(4 * 128);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int>((i * 7919) % 512);
  WindowOptions w;
  w.seqlen = 128;
  w.progress = false;
  const auto r = kl_divergence(m, m, tokens, w);
  EXPECT_EQ(r.mean_kld, 0.0);
  EXPECT_EQ(r.p99_kld, 0.0);
  EXPECT_EQ(r.top1_agreement, 1.0);
  EXPECT_EQ(r.tokens_scored, 4 * 127);
  EXPECT_DOUBLE_EQ(r.base_ppl, r.model_ppl);
  // And perplexity over the same windows is exp(mean NLL) computed by hand.
  const auto p = perplexity(m, tokens, w);
  double nll = 0;
  torch::NoGradGuard ng;
  for (int win = 0; win < 4; ++win) {
    std::vector<int64_t> ids(tokens.begin() + win * 128, tokens.begin() + (win + 1) * 128);
    const auto lp = torch::log_softmax(m.forward(torch::tensor(ids).unsqueeze(0))[0].to(torch::kFloat64), -1);
    double s = 0;
    for (int t = 0; t < 127; ++t) s -= lp[t][ids[t + 1]].item<double>();
    nll += s / 127;
  }
  EXPECT_NEAR(p.ppl, std::exp(nll / 4), 1e-4 * p.ppl);
}

TEST(Checkpoints, KLDOnTheSecondHalfOfEachWindowAsLlamaCppScoresIt) {
  TOGA_REQUIRE_FILE(stories260k_path());
  const Model base = load_model(open_checkpoint(stories260k_path()));
  Model other = load_model(open_checkpoint(stories260k_path()));
  other.blocks[2].up.weight.mul_(1.1);  // a perturbed model
  std::vector<int> tokens(3 * 64);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int>((i * 7919) % 512);
  WindowOptions w;
  w.seqlen = 64;
  w.score_from = 32;  // what `eval kld --protocol llama.cpp` sets: the second half of each window
  w.progress = false;
  const auto r = kl_divergence(base, other, tokens, w);
  EXPECT_EQ(r.tokens_scored, 3 * 31);  // positions 32..62 predict tokens 33..63
  double kld = 0;
  torch::NoGradGuard ng;
  for (int win = 0; win < 3; ++win) {
    std::vector<int64_t> ids(tokens.begin() + win * 64, tokens.begin() + (win + 1) * 64);
    const auto x = torch::tensor(ids).unsqueeze(0);
    const auto lp = torch::log_softmax(base.forward(x)[0].to(torch::kFloat64), -1);
    const auto lq = torch::log_softmax(other.forward(x)[0].to(torch::kFloat64), -1);
    for (int t = 32; t < 63; ++t) kld += (lp[t].exp() * (lp[t] - lq[t])).sum().item<double>();
  }
  EXPECT_GT(r.mean_kld, 0.0);
  EXPECT_NEAR(r.mean_kld, kld / (3 * 31), 1e-5 * r.mean_kld);
  // The runtime forward's KLD (float64 log-softmax per position) agrees.
  const auto rt = kl_divergence(*export_runtime(base), *export_runtime(other), tokens, w);
  EXPECT_EQ(rt.tokens_scored, r.tokens_scored);
  EXPECT_NEAR(rt.mean_kld, r.mean_kld, 1e-4 * r.mean_kld);
  EXPECT_NEAR(rt.base_ppl, r.base_ppl, 1e-5 * r.base_ppl);
  EXPECT_NEAR(rt.model_ppl, r.model_ppl, 1e-5 * r.model_ppl);
  EXPECT_NEAR(rt.top1_agreement, r.top1_agreement, 2.0 / 93);
}
