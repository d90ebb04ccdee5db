// The weight-only product on the packed layout against its float64 definition on random codes:
// every container (binary, 2-, 3-in-4-, 4-, 5-in-8- and 8-bit codes), mixed in one weight (binary +
// INT4 salient, as W(1.6)A16 stores it), ragged groups, fractional zero points (binarization),
// token counts that exercise every tile (1, 2, 3, 5, 7, 19, 33), on every kernel family this CPU has
// (one it lacks is reported skipped); outputs poisoned beforehand, so every element must be written.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "runtime/wgemm.h"
#include "util/error.h"

using namespace toga;
using namespace toga::rt;

namespace {

struct Block {
  int64_t begin, end;
  int code_bits;  // the quantizer's bits; stored in container_bits(code_bits)
};

struct Shape {
  const char* name;
  int64_t tokens, rows, cols;
  std::vector<Block> blocks;
};

std::vector<Block> groups(int64_t begin, int64_t end, int64_t size, int bits) {
  std::vector<Block> out;
  for (int64_t c = begin; c < end; c += size) out.push_back({c, std::min(c + size, end), bits});
  return out;
}

std::vector<Block> concat(std::vector<Block> a, const std::vector<Block>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

std::vector<Shape> shapes() {
  return {{"one token, ragged INT4 groups", 1, 17, 45, groups(0, 45, 16, 4)},
          {"W4A16 g128 at 576 = 4.5 x 128", 33, 40, 576, groups(0, 576, 128, 4)},
          {"binary + INT4 salient (W(1.6)A16)", 19, 33, 300, concat(groups(0, 236, 128, 1), groups(236, 300, 64, 4))},
          {"W8 per row", 7, 16, 96, groups(0, 96, 96, 8)},
          {"W3 and W5 in their containers", 3, 20, 73, concat(groups(0, 43, 43, 3), groups(43, 73, 30, 5))},
          {"W2 ragged", 2, 18, 37, groups(0, 37, 32, 2)},
          {"tiny odd", 5, 1, 9, groups(0, 9, 9, 1)}};
}

void check_isa(Isa isa) {
  if (!isa_available(isa)) GTEST_SKIP() << isa_name(isa) << " is not available on this CPU (" << cpu_info().vendor << ")";
  std::mt19937 rng(11);
  for (const Shape& s : shapes()) {
    SCOPED_TRACE(s.name);
    const int64_t nb = int64_t(s.blocks.size());
    std::vector<ColumnBlock> stored;
    std::vector<int8_t> codes(size_t(s.rows * s.cols));
    std::vector<float> scales(size_t(s.rows * nb)), zeros(size_t(s.rows * nb));
    for (const Block& b : s.blocks) stored.push_back({b.begin, b.end, container_bits(b.code_bits)});
    for (int64_t n = 0; n < s.rows; ++n)
      for (int64_t bi = 0; bi < nb; ++bi) {
        const Block& b = s.blocks[size_t(bi)];
        const int lo = b.code_bits == 1 ? 0 : -(1 << (b.code_bits - 1)), hi = lo + (1 << b.code_bits) - 1;
        std::uniform_int_distribution<int> code(lo, hi);
        for (int64_t k = b.begin; k < b.end; ++k) codes[size_t(n * s.cols + k)] = int8_t(code(rng));
        scales[size_t(n * nb + bi)] = std::uniform_real_distribution<float>(0.001f, 0.1f)(rng);
        // Binarization's zero points are fractional; others asymmetric integers or 0.
        zeros[size_t(n * nb + bi)] = b.code_bits == 1 ? std::uniform_real_distribution<float>(-3, 3)(rng) : float(code(rng) / 2);
      }
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> x(size_t(s.tokens * s.cols));
    for (auto& v : x) v = normal(rng) * (std::uniform_real_distribution<float>(0, 1)(rng) < 0.02f ? 20.0f : 1.0f);
    const PackedWeight w = pack_weight(codes.data(), scales.data(), zeros.data(), s.rows, s.cols, stored);
    std::vector<double> ref(size_t(s.tokens * s.rows));
    wgemm_reference(x.data(), s.tokens, codes.data(), scales.data(), zeros.data(), s.rows, s.cols, stored, ref.data());
    // The error bound of a float32 dot product: a few ulps of Σ |ŵ·x| per output.
    std::vector<double> bound(size_t(s.tokens * s.rows), 0.0);
    for (int64_t t = 0; t < s.tokens; ++t)
      for (int64_t n = 0; n < s.rows; ++n)
        for (int64_t bi = 0; bi < nb; ++bi)
          for (int64_t k = s.blocks[size_t(bi)].begin; k < s.blocks[size_t(bi)].end; ++k)
            bound[size_t(t * s.rows + n)] += std::fabs(scales[size_t(n * nb + bi)] *
                                                       (codes[size_t(n * s.cols + k)] - zeros[size_t(n * nb + bi)]) *
                                                       x[size_t(t * s.cols + k)]);
    std::vector<float> y(size_t(s.tokens * s.rows), std::numeric_limits<float>::quiet_NaN());
    wgemm(x.data(), s.tokens, w, y.data(), isa);
    double worst = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      ASSERT_TRUE(std::isfinite(y[i])) << "element " << i << " not written";
      worst = std::max(worst, std::fabs(double(y[i]) - ref[i]) / (bound[i] + 1e-30));
    }
    EXPECT_LT(worst, 1e-5) << isa_name(isa) << ": max |Δ| / Σ|ŵx| = " << worst;
  }
}

}  // namespace

TEST(WGemm, ScalarKernelMatchesTheDefinition) { check_isa(Isa::kScalar); }
TEST(WGemm, Avx512KernelMatchesTheDefinition) { check_isa(Isa::kAvx512Vnni); }

TEST(WGemm, CodesOutsideTheContainerAreRefused) {
  std::vector<int8_t> codes(32, 0);
  std::vector<float> scales(1, 1.0f), zeros(1, 0.0f);
  codes[5] = 2;  // binary codes are {0, 1}
  EXPECT_THROW(pack_weight(codes.data(), scales.data(), zeros.data(), 1, 32, {{0, 32, 1}}), Error);
  codes[5] = -3;  // 2-bit codes are −2..1
  EXPECT_THROW(pack_weight(codes.data(), scales.data(), zeros.data(), 1, 32, {{0, 32, 2}}), Error);
  zeros[0] = std::numeric_limits<float>::quiet_NaN();
  codes[5] = 0;
  EXPECT_THROW(pack_weight(codes.data(), scales.data(), zeros.data(), 1, 32, {{0, 32, 2}}), Error);
}

TEST(WGemm, FractionalZeroPointsAreRefusedByTheIntegerGemm) {
  std::vector<int8_t> codes(16, 1);
  std::vector<float> scales(1, 1.0f), zeros(1, 0.25f);
  const PackedWeight w = pack_weight(codes.data(), scales.data(), zeros.data(), 1, 16, {{0, 16, 4}});
  EXPECT_FALSE(w.integer_zeros);
  std::vector<float> x(16, 1.0f);
  QuantizedActivations q;
  EXPECT_THROW(quantize_activations(x.data(), 1, w, {{1.0}}, q, Isa::kScalar), Error);
}
