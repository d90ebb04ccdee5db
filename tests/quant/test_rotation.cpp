// Rotations folded into the weights compute the same function: for every supported layout (Llama
// GQA, Mistral's window, Qwen2's biases and tied embedding, Qwen3's q/k norms) the rotated model's
// float64 logits equal the original's; folding alone leaves unit gains; a pruned or quantized model
// and a non-orthogonal matrix are refused.
#include <gtest/gtest.h>

#include "io/checkpoint.h"
#include "model/tiny_model.h"
#include "quant/rotation.h"
#include "quant/transforms.h"
#include "test_util.h"
#include "util/error.h"

using namespace toga;
using namespace toga::test;
using torch::Tensor;

namespace {

double max_diff(const Tensor& a, const Tensor& b) { return (a - b).abs().max().item<double>(); }

}  // namespace

TEST(Rotation, RotatedModelsGiveTheOriginalLogitsInEveryLayout) {
  for (Family f : {Family::Llama, Family::Mistral, Family::Qwen2, Family::Qwen3}) {
    const ModelConfig c = tiny_config(f);
    const Tensor ids = random_ids(c, 2, 2, 9);
    for (const std::string kind : {"hadamard", "rotation"}) {
      Model m = random_model(c, 7, torch::kFloat64);
      const Tensor before = m.forward(ids);
      const Tensor q_before = m.blocks[0].q.weight.clone();
      rotate_model(m, {kind, 3, true});
      EXPECT_LT(max_diff(m.forward(ids), before), 1e-10) << int(f) << " " << kind;
      EXPECT_GT(max_diff(m.blocks[0].q.weight, q_before), 1e-3) << "the weights did change";
      EXPECT_FALSE(m.config.tie_word_embeddings);
      EXPECT_TRUE(torch::equal(m.final_norm, torch::ones_like(m.final_norm)));
    }
  }
}

TEST(Rotation, FoldingGainsAloneKeepsTheFunctionAndLeavesUnitGains) {
  const ModelConfig c = tiny_config(Family::Qwen2);  // tied embedding: folding must untie it
  Model m = random_model(c, 8, torch::kFloat64);
  const Tensor ids = random_ids(c, 2, 2, 9), before = m.forward(ids);
  fold_norm_gains(m);
  EXPECT_LT(max_diff(m.forward(ids), before), 1e-12);
  for (const Block& b : m.blocks) {
    EXPECT_TRUE(torch::equal(b.attn_norm, torch::ones_like(b.attn_norm)));
    EXPECT_TRUE(torch::equal(b.mlp_norm, torch::ones_like(b.mlp_norm)));
  }
  EXPECT_FALSE(m.config.tie_word_embeddings);
  // fp32: the same function to float32 rounding.
  Model f = random_model(c, 8, torch::kFloat32);
  const Tensor f_before = f.forward(ids);
  rotate_model(f, {"hadamard", 5, true});
  EXPECT_LT(max_diff(f.forward(ids), f_before), 1e-3);
}

TEST(Rotation, RefusesWhatItCannotRotate) {
  const ModelConfig c = tiny_config(Family::Llama);
  Model m = random_model(c, 9, torch::kFloat64);
  EXPECT_THROW(rotate_residual(m, orthogonal_transform("rotation", c.hidden_size, 1)), Error) << "gains not folded";
  fold_norm_gains(m);
  EXPECT_THROW(rotate_residual(m, torch::ones({c.hidden_size, c.hidden_size})), Error) << "not orthogonal";
  EXPECT_THROW(rotate_residual(m, torch::eye(4)), Error) << "wrong width";
  m.blocks[1].attn_in = torch::arange(c.hidden_size / 2);
  try {
    rotate_residual(m, orthogonal_transform("rotation", c.hidden_size, 1));
    FAIL() << "a pruned block";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("block 1 is pruned"), std::string::npos) << e.what();
  }
  Model q = random_model(c, 9, torch::kFloat64);
  EXPECT_THROW(rotate_model(q, {"sylvester", 1, true}), Error);
}

// The real model (tied embedding, 9 query / 3 kv heads of 64, 576 = 36 · 16 wide: a Paley ⊗ Sylvester
// Hadamard) rotated in fp32 gives its logits to float32 rounding.
TEST(Rotation, SmolLM2RotatedKeepsItsLogits) {
  TOGA_REQUIRE_FILE(smollm2_path());
  Model m = load_model(open_checkpoint(smollm2_path()));
  torch::manual_seed(4);
  const Tensor ids = torch::randint(m.config.vocab_size, {1, 48}, torch::kLong);
  const Tensor before = torch::log_softmax(m.forward(ids), -1);
  rotate_model(m, {"hadamard", 1, true});
  const Tensor after = torch::log_softmax(m.forward(ids), -1);
  EXPECT_LT(max_diff(after, before), 2e-3);
  EXPECT_TRUE(torch::equal(after.argmax(-1), before.argmax(-1)));
}

// A Cayley step stays on the orthogonal matrices and lowers a loss: f(R) = ‖A·R − A·R*‖², R* a
// random rotation in SO(n), from R = I.
TEST(Rotation, CayleyStepsStayOrthogonalAndLowerALoss) {
  torch::manual_seed(6);
  const int64_t n = 12;
  const Tensor A = torch::randn({40, n}, torch::kFloat64);
  // A target rotation in SO(n), where steps from I can reach it (det −1 is the other component).
  const Tensor s0 = torch::randn({n, n}, torch::kFloat64);
  const Tensor target = A.matmul(torch::matrix_exp(0.3 * (s0 - s0.t())));
  const double scale = 1.0 / (A - target).pow(2).sum().item<double>();  // f(I) = 1: steps of size ~lr
  auto loss = [&](const Tensor& r) { return scale * (A.matmul(r) - target).pow(2).sum(); };
  Tensor R = torch::eye(n, torch::kFloat64);
  const double start = loss(R).item<double>();
  double previous = start;
  for (int step = 0; step < 600; ++step) {
    Tensor p = R.clone().requires_grad_(true);
    loss(p).backward();
    R = cayley_sgd_step(R, p.grad(), 0.05, step % 50 == 49);
    EXPECT_LT((R.t().matmul(R) - torch::eye(n, torch::kFloat64)).abs().max().item<double>(), 1e-6) << "step " << step;
    const double now = loss(R).item<double>();
    if (step < 5) EXPECT_LT(now, previous) << "step " << step;
    previous = now;
  }
  EXPECT_LT(previous, 0.05 * start);
  EXPECT_THROW(cayley_sgd_step(R, torch::zeros({n, n + 1}, torch::kFloat64), 0.1), Error);
}
