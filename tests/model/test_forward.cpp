#include <gtest/gtest.h>

#include "model/generate.h"
#include "model/model.h"
#include "reference_llama.h"
#include "test_util.h"
#include "tiny_model.h"
#include "util/error.h"

using namespace toga;
using namespace toga::test;

namespace {

std::vector<int> random_ids(int n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int> ids(n);
  for (auto& i : ids) i = static_cast<int>(rng() % vocab);
  return ids;
}

double max_abs_diff(const torch::Tensor& logits, const std::vector<Vec>& ref) {
  double m = 0;
  auto l = logits.to(torch::kFloat64).contiguous();
  for (size_t t = 0; t < ref.size(); ++t)
    for (size_t v = 0; v < ref[t].size(); ++v) m = std::max(m, std::abs(l[t][v].item<double>() - ref[t][v]));
  return m;
}

struct Layout {
  const char* name;
  ModelConfig config;
};

std::vector<Layout> layouts() {
  std::vector<Layout> out;
  out.push_back({"llama_gqa_untied", tiny_config(Family::Llama)});
  auto tied = tiny_config(Family::Llama);
  tied.tie_word_embeddings = true;
  tied.num_key_value_heads = 4;  // plain multi-head attention
  out.push_back({"llama_mha_tied", tied});
  auto l3 = tiny_config(Family::Llama);
  l3.rope_theta = 500000;
  l3.rope_scaling.type = "llama3";
  l3.rope_scaling.factor = 8;
  l3.rope_scaling.low_freq_factor = 1;
  l3.rope_scaling.high_freq_factor = 4;
  l3.rope_scaling.original_max_position_embeddings = 16;  // small so all three frequency bands occur
  out.push_back({"llama3_rope_scaling", l3});
  auto bias = tiny_config(Family::Llama);
  bias.attention_bias = bias.o_proj_bias = bias.mlp_bias = true;
  out.push_back({"llama_biases", bias});
  out.push_back({"mistral_sliding_window", tiny_config(Family::Mistral)});
  out.push_back({"qwen2_qkv_bias", tiny_config(Family::Qwen2)});
  out.push_back({"qwen3_qk_norm", tiny_config(Family::Qwen3)});
  return out;
}

}  // namespace

TEST(Forward, MatchesFloat64ReferenceForEveryLayout) {
  for (const auto& layout : layouts()) {
    SCOPED_TRACE(layout.name);
    const auto w = random_weights(layout.config, 7);
    const Model m = build_model(layout.config, w);
    const auto ids = random_ids(11, layout.config.vocab_size, 3);
    const auto ref = reference_forward(layout.config, w, ids);
    std::vector<int64_t> ids64(ids.begin(), ids.end());
    torch::NoGradGuard ng;
    const auto logits = m.forward(torch::tensor(ids64).unsqueeze(0))[0];
    EXPECT_LT(max_abs_diff(logits, ref), 2e-4);
  }
}

TEST(Forward, Bfloat16StaysCloseToReference) {
  const auto c = tiny_config(Family::Llama);
  const auto w = random_weights(c, 9);
  LoadOptions opts;
  opts.dtype = torch::kBFloat16;
  const Model m = build_model(c, w, opts);
  const auto ids = random_ids(9, c.vocab_size, 4);
  const auto ref = reference_forward(c, w, ids);
  std::vector<int64_t> ids64(ids.begin(), ids.end());
  torch::NoGradGuard ng;
  const auto logits = m.forward(torch::tensor(ids64).unsqueeze(0))[0];
  EXPECT_EQ(logits.scalar_type(), torch::kBFloat16);
  // bf16 keeps 8 bits of mantissa: logits of magnitude ~3 agree to a few hundredths.
  EXPECT_LT(max_abs_diff(logits, ref), 0.1);
}

TEST(Forward, BatchedRowsEqualSingleRows) {
  const auto c = tiny_config(Family::Qwen3);
  const Model m = build_model(c, random_weights(c, 5));
  torch::NoGradGuard ng;
  const auto ids = torch::randint(c.vocab_size, {3, 10}, torch::kLong);
  const auto batched = m.forward(ids);
  for (int b = 0; b < 3; ++b)
    EXPECT_TRUE(torch::allclose(batched[b], m.forward(ids.narrow(0, b, 1))[0], 1e-5, 1e-5));
}

TEST(Forward, KVCacheDecodingEqualsFullForward) {
  for (const auto& layout : layouts()) {
    SCOPED_TRACE(layout.name);
    const Model m = build_model(layout.config, random_weights(layout.config, 11));
    torch::NoGradGuard ng;
    for (int64_t batch : {1, 2}) {  // batch 1 decodes through the GEMV path
      const auto ids = torch::randint(layout.config.vocab_size, {batch, 13}, torch::kLong);
      const auto full = m.forward(ids);
      KVCache cache;
      std::vector<torch::Tensor> parts;
      parts.push_back(m.forward(ids.narrow(1, 0, 4), &cache));  // a prompt, then one token at a time
      for (int t = 4; t < 13; ++t) parts.push_back(m.forward(ids.narrow(1, t, 1), &cache));
      EXPECT_EQ(cache.length, 13);
      EXPECT_TRUE(torch::allclose(torch::cat(parts, 1), full, 1e-5, 1e-5));
    }
  }
}

TEST(Forward, SharedPrefixCacheBroadcast) {
  const auto c = tiny_config(Family::Llama);
  const Model m = build_model(c, random_weights(c, 13));
  torch::NoGradGuard ng;
  const auto prefix = torch::randint(c.vocab_size, {1, 6}, torch::kLong);
  const auto tails = torch::randint(c.vocab_size, {3, 4}, torch::kLong);
  KVCache cache;
  m.forward(prefix, &cache);
  cache.broadcast_batch(3);
  const auto shared = m.forward(tails, &cache);
  const auto full = m.forward(torch::cat({prefix.expand({3, 6}), tails}, 1)).narrow(1, 6, 4);
  EXPECT_TRUE(torch::allclose(shared, full, 1e-5, 1e-5));
}

TEST(Forward, PermutedInputChannelsLeaveLogitsUnchanged) {
  const auto c = tiny_config(Family::Llama);
  Model m = build_model(c, random_weights(c, 17));
  torch::NoGradGuard ng;
  const auto ids = torch::randint(c.vocab_size, {1, 9}, torch::kLong);
  const auto before = m.forward(ids);
  for (auto* s : m.block_sites()) {
    const auto perm = torch::randperm(s->in_features(), torch::kLong);
    s->weight = s->weight.index_select(1, perm).contiguous();
    s->in_index = perm;
  }
  EXPECT_TRUE(torch::allclose(m.forward(ids), before, 1e-5, 1e-5));
}

TEST(Forward, ObserversSeeEverySiteInput) {
  const auto c = tiny_config(Family::Llama);
  Model m = build_model(c, random_weights(c, 19));
  std::map<std::string, int64_t> seen;
  std::vector<ObserverHandle> handles;
  for (auto* s : m.block_sites())
    handles.push_back(s->add_observer([&](const LinearSite& site, const torch::Tensor& x) {
      EXPECT_EQ(x.size(-1), site.in_features());
      seen[site.name] += x.numel() / x.size(-1);
    }));
  torch::NoGradGuard ng;
  const auto ids = torch::randint(c.vocab_size, {2, 5}, torch::kLong);
  m.forward(ids);
  EXPECT_EQ(seen.size(), size_t(7 * c.num_hidden_layers));
  for (const auto& [name, rows] : seen) EXPECT_EQ(rows, 10) << name;
  // Handles detach exactly their own observer, in any order.
  handles.front() = ObserverHandle();
  std::swap(handles[1], handles.back());
  handles.pop_back();
  seen.clear();
  m.forward(ids);
  EXPECT_EQ(seen.size(), size_t(7 * c.num_hidden_layers - 2));
  handles.clear();
  seen.clear();
  m.forward(ids);
  EXPECT_TRUE(seen.empty());
}

TEST(Forward, NonFiniteWeightIsAClearError) {
  const auto c = tiny_config(Family::Llama);
  auto w = random_weights(c, 23);
  w.t[names::layer(1, "mlp.up_proj.weight")].second[5] = std::nanf("");
  try {
    build_model(c, w);
    FAIL() << "expected an error";
  } catch (const toga::Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.1.mlp.up_proj.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("non-finite"), std::string::npos) << e.what();
  }
}

TEST(Generate, GreedyIsDeterministicAndSeededSamplingReproduces) {
  const auto c = tiny_config(Family::Llama);
  const Model m = build_model(c, random_weights(c, 29));
  SamplingOptions greedy;
  greedy.max_new_tokens = 12;
  const auto a = generate(m, {1, 2, 3}, greedy);
  EXPECT_EQ(a.size(), 12u);
  // Greedy decoding through the cache equals argmax of a full forward at each step.
  std::vector<int64_t> seq = {1, 2, 3};
  torch::NoGradGuard ng;
  for (int tok : a) {
    const auto logits = m.forward(torch::tensor(seq).unsqueeze(0));
    EXPECT_EQ(logits[0][seq.size() - 1].argmax().item<int64_t>(), tok);
    seq.push_back(tok);
  }
  SamplingOptions s;
  s.max_new_tokens = 20;
  s.temperature = 1.0;
  s.top_p = 0.9;
  s.seed = 42;
  EXPECT_EQ(generate(m, {1}, s), generate(m, {1}, s));
  s.seed = 43;
  const auto other = generate(m, {1}, s);
  s.seed = 42;
  EXPECT_NE(generate(m, {1}, s), other);
}

TEST(Forward, LongSequencesThroughChunkedAttentionMatchReference) {
  // 2 x 1100 tokens make the attention run in several query chunks (and the sliding window of
  // Mistral cut keys inside chunks).
  for (Family f : {Family::Llama, Family::Mistral}) {
    auto c = tiny_config(f);
    c.max_position_embeddings = 2048;
    const auto w = random_weights(c, 31);
    const Model m = build_model(c, w);
    const auto ids = random_ids(1100, c.vocab_size, 8);
    std::vector<int64_t> ids64(ids.begin(), ids.end());
    torch::NoGradGuard ng;
    const auto batch = torch::tensor(ids64).unsqueeze(0).expand({2, 1100}).contiguous();
    const auto logits = m.forward(batch);
    const auto ref = reference_forward(c, w, ids);
    EXPECT_LT(max_abs_diff(logits[1], ref), 5e-4) << family_name(f);
  }
}
