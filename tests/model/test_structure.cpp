// Per-layer shapes: a model whose blocks keep different heads, MLP channels and residual channels
// (as index lists) computes what the full model computes with the same channels masked to zero,
// and loads, saves and converts like any other.
#include <gtest/gtest.h>

#include <random>

#include "io/checkpoint.h"
#include "model/model.h"
#include "model/save.h"
#include "model/structure.h"
#include "tiny_model.h"
#include "test_util.h"
#include "util/atomic_file.h"
#include "util/error.h"

using namespace toga;
using namespace toga::test;

namespace {

torch::Tensor random_subset(int64_t n, int64_t keep, std::mt19937_64& rng) {
  std::vector<int64_t> all(n);
  for (int64_t i = 0; i < n; ++i) all[i] = i;
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(keep);
  std::sort(all.begin(), all.end());
  return torch::tensor(all, torch::kLong);
}

torch::Tensor mask_of(const torch::Tensor& keep, int64_t n) {
  auto m = torch::zeros({n});
  if (keep.defined()) m.index_fill_(0, keep, 1.0);
  else m.fill_(1.0);
  return m;
}

// Different pruning in every block (block 1 also drops a KV head with its query heads).
std::vector<BlockPruning> random_pruning(const Model& m, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int64_t h = m.config.hidden_size, f = m.config.intermediate_size;
  std::vector<BlockPruning> out(m.blocks.size());
  for (size_t l = 0; l < out.size(); ++l) {
    auto& p = out[l];
    p.attn_in = random_subset(h, h * 3 / 4 - int64_t(l), rng);
    p.attn_out = random_subset(h, h / 2 + int64_t(l), rng);
    p.mlp_in = random_subset(h, h - 5 - int64_t(l), rng);
    p.mlp_inner = random_subset(f, f / 3 + int64_t(l), rng);
    p.mlp_out = random_subset(h, h * 5 / 8, rng);
    if (l == 1) p.kv_heads = torch::tensor(std::vector<int64_t>{1}, torch::kLong);
  }
  return out;
}

// The same pruning expressed as masks on the unpruned model.
void attach_masks(Model& m, const std::vector<BlockPruning>& prune) {
  const auto& c = m.config;
  for (size_t l = 0; l < prune.size(); ++l) {
    Block& b = m.blocks[l];
    const auto& p = prune[l];
    for (auto* s : {&b.q, &b.k, &b.v}) s->in_mask = mask_of(p.attn_in, c.hidden_size);
    b.o.out_mask = mask_of(p.attn_out, c.hidden_size);
    for (auto* s : {&b.gate, &b.up}) s->in_mask = mask_of(p.mlp_in, c.hidden_size);
    b.up.out_mask = mask_of(p.mlp_inner, c.intermediate_size);  // silu(gate) * 0 = 0
    b.down.out_mask = mask_of(p.mlp_out, c.hidden_size);
    if (p.kv_heads.defined()) {
      // A removed KV group's values are zero, so its heads add nothing through o_proj.
      const int64_t d = c.head_dim;
      auto v_rows = torch::zeros({int64_t(c.num_key_value_heads) * d});
      for (int64_t i = 0; i < p.kv_heads.numel(); ++i) v_rows.narrow(0, p.kv_heads[i].item<int64_t>() * d, d).fill_(1);
      b.v.out_mask = v_rows;
    }
  }
}

}  // namespace

TEST(Structure, PrunedModelEqualsMaskedFullModelAndRoundTrips) {
  ModelConfig c = tiny_config(Family::Llama);
  c.attention_bias = true;  // biases are sliced with their rows
  c.mlp_bias = true;
  c.o_proj_bias = true;
  const auto w = random_weights(c, 41);
  Model pruned = build_model(c, w);
  Model masked = build_model(c, w);
  const auto prune = random_pruning(pruned, 7);
  for (int l = 0; l < c.num_hidden_layers; ++l) prune_block(pruned, l, prune[l]);
  attach_masks(masked, prune);

  torch::NoGradGuard ng;
  torch::manual_seed(3);
  const auto ids = torch::randint(c.vocab_size, {2, 11}, torch::kLong);
  const auto expected = masked.forward(ids);
  const auto got = pruned.forward(ids);
  EXPECT_LT((got - expected).abs().max().item<double>(), 1e-5);
  // Really pruned: fewer parameters, different widths per block, heads from the weights.
  const ModelConfig pc = pruned.current_config();
  ASSERT_EQ(pc.layer_shapes.size(), 2u);
  EXPECT_NE(pc.layer_shapes[0], pc.layer_shapes[1]);
  EXPECT_EQ(pc.layer_shapes[1].num_key_value_heads, 1);
  EXPECT_EQ(pc.layer_shapes[1].num_attention_heads, 2);
  EXPECT_LT(pc.num_parameters(), c.num_parameters());
  // Decoding through the KV cache agrees with the full forward.
  KVCache cache;
  const auto first = pruned.forward(ids.narrow(1, 0, 6), &cache);
  const auto rest = pruned.forward(ids.narrow(1, 6, 5), &cache);
  EXPECT_LT((torch::cat({first, rest}, 1) - got).abs().max().item<double>(), 1e-5);

  // Saved as an HF directory (config with per-layer shapes, index lists), loaded back, converted.
  ScratchDir dir;
  save_model(dir / "pruned", pruned, DType::F32);
  const Model loaded = load_model(open_checkpoint(dir / "pruned"));
  EXPECT_TRUE(torch::equal(loaded.forward(ids), got));
  const int rc = std::system(fmt::format("{} convert {} {} --tokenizer {} >/dev/null 2>&1", TOGA_CLI,
                                         dir / "pruned", dir / "converted", stories260k_tokenizer())
                                 .c_str());
  if (std::filesystem::exists(stories260k_tokenizer())) {
    ASSERT_EQ(rc, 0);
    const Model converted = load_model(open_checkpoint(dir / "converted"));
    EXPECT_TRUE(torch::equal(converted.forward(ids), got));
    EXPECT_EQ(converted.current_config().layer_shapes, pc.layer_shapes);
  }
}

TEST(Structure, PrunedStories260KEqualsMaskedModel) {
  TOGA_REQUIRE_FILE(stories260k_path());
  Model pruned = load_model(open_checkpoint(stories260k_path()));
  Model masked = load_model(open_checkpoint(stories260k_path()));
  const auto prune = random_pruning(pruned, 3);
  for (int l = 0; l < pruned.config.num_hidden_layers; ++l) prune_block(pruned, l, prune[l]);
  attach_masks(masked, prune);
  torch::NoGradGuard ng;
  const auto ids = torch::randint(pruned.config.vocab_size, {1, 64}, torch::kLong);
  EXPECT_LT((pruned.forward(ids) - masked.forward(ids)).abs().max().item<double>(), 1e-4);
}

TEST(Structure, BadPruningAndBadShapesAreClearErrors) {
  const ModelConfig c = tiny_config(Family::Llama);
  const auto w = random_weights(c, 43);
  auto error_of = [](const std::function<void()>& f) -> std::string {
    try {
      f();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  Model m = build_model(c, w);
  BlockPruning p;
  p.attn_in = torch::tensor(std::vector<int64_t>{3, 1}, torch::kLong);
  EXPECT_NE(error_of([&] { prune_block(m, 0, p); }).find("increasing"), std::string::npos);
  p.attn_in = torch::tensor(std::vector<int64_t>{1, 99}, torch::kLong);
  EXPECT_NE(error_of([&] { prune_block(m, 0, p); }).find("[0, 32)"), std::string::npos);

  // A checkpoint whose config promises per-layer shapes the tensors do not have.
  BlockPruning ok;
  ok.mlp_inner = torch::arange(10, torch::kLong);
  prune_block(m, 1, ok);
  ScratchDir dir;
  save_model(dir / "m", m, DType::F32);
  auto j = nlohmann::json::parse(read_text_file(dir / "m/config.json"));
  j["toga_layer_shapes"][1]["intermediate_size"] = 11;
  write_text_atomically(dir / "m/config.json", j.dump());
  const auto msg = error_of([&] { load_model(open_checkpoint(dir / "m")); });
  EXPECT_NE(msg.find("mlp.gate_proj.weight' has shape [10, 32] but the config requires [11, 32]"), std::string::npos)
      << msg;
}
