// The libtorch-free runtime forward (runtime/transformer.h, built by export_runtime) against the
// libtorch forward of the same model: every family (Llama GQA, Mistral's sliding window, Qwen2's
// biases, Qwen3's q/k norms), prefill in one call and then token by token through the KV cache;
// quantized checkpoints (W4A4 + INT8 + KV4 with a pruned block, weight-only binary + INT4) on their
// packed kernels, KLD ≤ 1e-4 against the libtorch forward on the same kernels.
#include <gtest/gtest.h>

#include "io/checkpoint.h"
#include "model/runtime_export.h"
#include "model/tiny_model.h"
#include "quant/format.h"
#include "quant/packed_test_models.h"
#include "quant/recipes.h"
#include "test_util.h"
#include "util/error.h"

using namespace toga;
using namespace toga::test;

namespace {

// Logits [T, vocab] of the runtime: the first `prefill` tokens in one call, the rest one by one.
torch::Tensor runtime_logits(const rt::Transformer& t, const std::vector<int32_t>& ids, int64_t prefill) {
  rt::Session session(t, int64_t(ids.size()) + 3);
  torch::Tensor out = torch::empty({int64_t(ids.size()), t.vocab}, torch::kFloat32);
  session.forward(ids.data(), prefill, out.data_ptr<float>(), true);
  for (int64_t i = prefill; i < int64_t(ids.size()); ++i)
    session.forward(ids.data() + i, 1, out[i].data_ptr<float>(), false);
  return out;
}

double mean_kld(const torch::Tensor& ref_logits, const torch::Tensor& logits) {
  const auto p = torch::log_softmax(ref_logits.to(torch::kFloat64), -1), q = torch::log_softmax(logits.to(torch::kFloat64), -1);
  return (p.exp() * (p - q)).sum(-1).mean().item<double>();
}

std::vector<int32_t> random_ids(int vocab, int n, uint64_t seed) {
  const auto s = random_token_stream(vocab, n, seed);
  return std::vector<int32_t>(s.begin(), s.end());
}

torch::Tensor torch_logits(const Model& m, const std::vector<int32_t>& ids) {
  torch::NoGradGuard no_grad;
  std::vector<int64_t> v(ids.begin(), ids.end());
  return m.forward(torch::tensor(v, torch::kLong).unsqueeze(0))[0].to(torch::kFloat32);
}

}  // namespace

TEST(RuntimeForward, MatchesTheLibtorchForwardForEveryFamily) {
  for (Family f : {Family::Llama, Family::Mistral, Family::Qwen2, Family::Qwen3}) {
    ModelConfig c = tiny_config(f);
    if (f == Family::Mistral) c.sliding_window = 5;  // shorter than the sequence: the window matters
    SCOPED_TRACE(testing::Message() << "family " << int(f));
    const Model m = random_model(c, 11);
    const auto ids = random_ids(c.vocab_size, 12, 4);
    const torch::Tensor want = torch_logits(m, ids);
    const auto t = export_runtime(m);
    for (int64_t prefill : {int64_t(12), int64_t(7), int64_t(1)}) {
      const torch::Tensor got = runtime_logits(*t, ids, prefill);
      const double err = (got - want).abs().max().item<double>(), scale = want.abs().max().item<double>();
      EXPECT_LT(err, 1e-4 * scale) << "prefill " << prefill << ": max |Δlogit| " << err << " of " << scale;
    }
  }
}

TEST(RuntimeForward, QuantizedCheckpointsMatchTheirPackedLibtorchForward) {
  const ModelConfig c = packed_test_config();
  torch::manual_seed(6);
  const torch::Tensor calib = torch::randint(c.vocab_size, {4, 32}, torch::kLong);
  const QuantizeOptions atom = atom_ragged_options(), binary = binary_int4_options();
  for (const auto& [name, options] : {std::pair{"atom W4A4 KV4", atom}, std::pair{"binary + INT4", binary}}) {
    SCOPED_TRACE(name);
    Model m = random_model(c, 5);
    Plan plan = uniform_plan(m, options, "test");
    plan.blocks[1] = pruned_block();
    const auto report = apply_plan(m, plan, calib, "test", false);
    ScratchDir dir;
    save_quantized_checkpoint(dir / "q", m, report, DType::F32, {});
    LoadOptions opts;
    opts.packed_kernels = true;
    const Model packed = load_any_model(open_checkpoint(dir / "q"), opts);
    const auto ids = random_ids(c.vocab_size, 20, 9);
    const torch::Tensor want = torch_logits(packed, ids);
    const auto t = export_runtime(packed);
    EXPECT_EQ(t->kv.bits, options.kv.bits);
    // q/k/v and gate/up share their input order and blocks: each pair runs as one linear.
    for (const auto& b : t->blocks) {
      EXPECT_EQ(b.qkv.rows, b.heads * c.head_dim + 2 * b.kv_heads * c.head_dim);
      EXPECT_EQ(b.gate_up.rows, 2 * b.down.cols);
    }
    for (int64_t prefill : {int64_t(20), int64_t(6)}) {
      const torch::Tensor got = runtime_logits(*t, ids, prefill);
      const double kld = mean_kld(want, got);
      std::printf("%s, prefill %lld: KLD %.3g, max |Δlogit| %.3g\n", name, (long long)prefill, kld,
                  (got - want).abs().max().item<double>());
      EXPECT_LT(kld, 1e-4) << "prefill " << prefill;
    }
  }
}

TEST(RuntimeForward, LinearsReadingTheirInputDifferentlyAreNotFused) {
  rt::Linear a, b;
  a.kind = b.kind = rt::LinearKind::kDense;
  a.rows = 16;
  b.rows = 8;
  a.cols = b.cols = 4;
  std::vector<float> wa(16 * 4, 1.0f), wb(8 * 4, 2.0f);
  a.dense = rt::pack_dense(wa.data(), 16, 4);
  b.dense = rt::pack_dense(wb.data(), 8, 4);
  b.in_index = {3, 2, 1, 0};
  EXPECT_FALSE(rt::append_rows(a, b));  // another column order
  EXPECT_EQ(a.rows, 16);
  b.in_index.clear();
  ASSERT_TRUE(rt::append_rows(a, b));
  EXPECT_EQ(a.rows, 24);
  std::vector<float> x(4, 1.0f), y(24, 0.0f);
  rt::LinearScratch scratch;
  a.forward(x.data(), 1, 4, y.data(), scratch);
  EXPECT_FLOAT_EQ(y[0], 4.0f);
  EXPECT_FLOAT_EQ(y[23], 8.0f);
  rt::Linear c = b;
  c.rows = b.rows;
  EXPECT_FALSE(rt::append_rows(b, c)) << "8 rows are not a whole panel";
}

TEST(RuntimeForward, WhatItCannotRunIsRefusedByName) {
  ModelConfig c = tiny_config(Family::Llama);
  Model m = random_model(c, 5);
  m.blocks[0].up.act = {QuantSpec{4, true, 0}, QuantSpec{16}, 0};  // fake-quant activations, dense kernel
  try {
    export_runtime(m);
    FAIL() << "exported a site with fake-quantized activations";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("up_proj"), std::string::npos) << e.what();
  }
}

TEST(RuntimeForward, Int8LmHeadIsWhatTheLibtorchForwardEvaluates) {
  ModelConfig c = tiny_config(Family::Llama);
  c.tie_word_embeddings = true;
  Model m = random_model(c, 21);
  const torch::Tensor embed_before = m.embed.clone();
  use_int8_lm_head(m);
  EXPECT_TRUE(torch::equal(m.embed, embed_before)) << "the embedding must stay FP (untied)";
  // Each row: at most 255 distinct values, the row's absmax kept exactly.
  const torch::Tensor w = m.lm_head.weight;
  const torch::Tensor steps = w / (embed_before.abs().amax(1, true) / 127.0f);
  EXPECT_LT((steps - steps.round()).abs().max().item<double>(), 1e-3);
  EXPECT_GT((w - embed_before).abs().max().item<double>(), 0.0);
  const auto ids = random_ids(c.vocab_size, 10, 2);
  const torch::Tensor want = torch_logits(m, ids);
  RuntimeOptions o;
  o.lm_head = "int8";
  const auto t = export_runtime(m, o);
  EXPECT_EQ(t->lm_head.kind, rt::LinearKind::kWeightOnly);
  const torch::Tensor got = runtime_logits(*t, ids, 10);
  EXPECT_LT((got - want).abs().max().item<double>(), 1e-4 * want.abs().max().item<double>());
}
