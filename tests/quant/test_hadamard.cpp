// Hadamard matrices beyond powers of two: every order toga builds is a Hadamard matrix (±1 entries,
// H·Hᵀ = n·I exactly in float64), the fast transform equals the dense product, the model widths the
// rotation recipes need are covered, and a width with no construction is refused by name.
#include <gtest/gtest.h>

#include <cmath>

#include "quant/hadamard.h"
#include "quant/transforms.h"
#include "util/error.h"

using namespace toga;
using torch::Tensor;

namespace {

void expect_hadamard(int64_t n) {
  const Tensor h = hadamard_matrix(n);
  ASSERT_EQ(h.sizes(), (std::vector<int64_t>{n, n}));
  EXPECT_TRUE(torch::equal(h.abs(), torch::ones_like(h))) << "entries ±1, order " << n;
  EXPECT_TRUE(torch::equal(h.matmul(h.t()), n * torch::eye(n, torch::kFloat64))) << "H·Hᵀ = n·I, order " << n;
}

}  // namespace

TEST(Hadamard, EveryConstructibleOrderUpTo400IsAHadamardMatrix) {
  int built = 0;
  for (int64_t n = 1; n <= 400; ++n) {
    if (!has_hadamard(n)) {
      EXPECT_GT(n, 2) << "orders 1 and 2 are always built";
      continue;
    }
    ++built;
    expect_hadamard(n);
  }
  // Every multiple of 4 up to 100 has a prime Paley ⊗ Sylvester form but 52 and 100 (Paley over the
  // prime powers 25 and 49) and 92 (Williamson's construction).
  for (int64_t n = 4; n <= 100; n += 4) EXPECT_EQ(has_hadamard(n), n != 52 && n != 92 && n != 100) << n;
  EXPECT_GT(built, 80);
  for (int64_t n : {3, 6, 18, 30}) EXPECT_FALSE(has_hadamard(n)) << "not 1, 2 or a multiple of 4: " << n;
}

TEST(Hadamard, ModelWidthsAreCoveredAndFactoredWithTheLargestPowerOfTwo) {
  struct Case {
    int64_t n, m, pow2;
  };
  // SmolLM2 576/1536, Qwen2.5 896/4864/8960, Llama 3 14336, Qwen2 18944, heads 64/128; Llama 2's
  // 11008 = 43 · 256 only as 5504 · 2 (Paley I, q = 5503): built, but the transform is nearly dense.
  for (const Case c : {Case{576, 36, 16}, Case{1536, 12, 128}, Case{896, 28, 32}, Case{4864, 76, 64}, Case{8960, 140, 64},
                       Case{14336, 28, 512}, Case{18944, 148, 128}, Case{64, 1, 64}, Case{4096, 1, 4096},
                       Case{11008, 5504, 2}}) {
    const auto f = hadamard_factors(c.n);
    EXPECT_EQ(f.m, c.m) << c.n;
    EXPECT_EQ(f.pow2, c.pow2) << c.n;
  }
  for (int64_t n : {576, 1536, 896}) expect_hadamard(n);
  try {
    hadamard_factors(100);
    FAIL() << "100 has no construction here";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("width 100"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("rotation"), std::string::npos) << e.what();
  }
}

TEST(Hadamard, FastTransformEqualsTheDenseProduct) {
  torch::manual_seed(3);
  for (int64_t n : {1, 2, 12, 20, 28, 36, 44, 64, 576, 1536}) {
    const Tensor x = torch::randn({5, n}, torch::kFloat64);
    const Tensor dense = x.matmul(hadamard_matrix(n)) / std::sqrt(double(n));
    EXPECT_TRUE(torch::allclose(fast_hadamard(x), dense, 1e-11, 1e-11)) << n;
    // float32 input: float32 arithmetic, same result to its precision; leading dimensions kept.
    const Tensor y = fast_hadamard(x.to(torch::kFloat32).reshape({5, 1, n}));
    EXPECT_EQ(y.sizes(), (std::vector<int64_t>{5, 1, n}));
    EXPECT_TRUE(torch::allclose(y.reshape({5, n}).to(torch::kFloat64), dense, 1e-4, 1e-4)) << n;
  }
  // Large widths: the transform keeps inner products (it is orthogonal).
  for (int64_t n : {4864, 14336, 18944}) {
    const Tensor x = torch::randn({6, n}, torch::kFloat64), y = fast_hadamard(x);
    EXPECT_TRUE(torch::allclose(y.matmul(y.t()), x.matmul(x.t()), 1e-9, 1e-9)) << n;
  }
}

TEST(Hadamard, RandomSignHadamardTransformsAtModelWidthsAreOrthogonal) {
  for (int64_t n : {576, 1536}) {
    const Tensor h = orthogonal_transform("hadamard", n, 9).to(torch::kFloat64);
    EXPECT_LT((h.t().matmul(h) - torch::eye(n, torch::kFloat64)).abs().max().item<double>(), 1e-6) << n;
    EXPECT_TRUE(torch::allclose(h.abs(), hadamard_matrix(n).abs() / std::sqrt(double(n)), 1e-7, 1e-7));
  }
}
