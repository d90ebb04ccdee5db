// The packed integer GEMM against its float64 definition on random codes: odd shapes, one token,
// ragged groups, INT4 and INT8 blocks mixed (Atom's layout), asymmetric weights, on every kernel
// family this CPU has (one the CPU lacks is reported skipped); outputs poisoned beforehand, so every
// element must be written.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "runtime/qgemm.h"
#include "util/error.h"

using namespace toga;
using namespace toga::rt;

namespace {

struct Shape {
  const char* name;
  int64_t tokens, rows, cols;
  std::vector<ColumnBlock> blocks;
  bool asymmetric = false;
};

std::vector<ColumnBlock> groups(int64_t begin, int64_t end, int64_t size, int bits) {
  std::vector<ColumnBlock> out;
  for (int64_t c = begin; c < end; c += size) out.push_back({c, std::min(c + size, end), bits});
  return out;
}

std::vector<ColumnBlock> atom(int64_t cols, int64_t salient, int64_t group) {
  auto out = groups(0, cols - salient, group, 4);
  out.push_back({cols - salient, cols, 8});
  return out;
}

std::vector<Shape> shapes() {
  return {{"one token, ragged INT4 groups", 1, 17, 40, groups(0, 40, 16, 4)},
          {"Atom W4A4 + INT8 salient", 5, 33, 150, atom(150, 20, 64)},
          {"W8A8 per row", 7, 16, 96, groups(0, 96, 96, 8)},
          {"tiny odd", 3, 1, 9, groups(0, 9, 9, 4)},
          {"asymmetric INT4 weights", 6, 20, 72, groups(0, 72, 24, 4), true},
          {"576 = 4.5 x 128 + salient", 9, 40, 576, atom(576, 72, 128)}};
}

void check_isa(Isa isa) {
  if (!isa_available(isa)) GTEST_SKIP() << isa_name(isa) << " is not available on this CPU (" << cpu_info().vendor << ")";
  std::mt19937 rng(7);
  for (const Shape& s : shapes()) {
    SCOPED_TRACE(s.name);
    const int64_t nb = int64_t(s.blocks.size());
    std::vector<int8_t> codes(size_t(s.rows * s.cols));
    std::vector<float> scales(size_t(s.rows * nb)), zeros(size_t(s.rows * nb), 0.0f);
    for (int64_t n = 0; n < s.rows; ++n)
      for (int64_t b = 0; b < nb; ++b) {
        const int bits = s.blocks[size_t(b)].bits;
        std::uniform_int_distribution<int> code(-(1 << (bits - 1)), (1 << (bits - 1)) - 1);
        for (int64_t k = s.blocks[size_t(b)].begin; k < s.blocks[size_t(b)].end; ++k) codes[size_t(n * s.cols + k)] = int8_t(code(rng));
        scales[size_t(n * nb + b)] = std::uniform_real_distribution<float>(0.001f, 0.1f)(rng);
        if (s.asymmetric) zeros[size_t(n * nb + b)] = float(code(rng) / 2);
      }
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> x(size_t(s.tokens * s.cols));
    for (auto& v : x) v = normal(rng) * (std::uniform_real_distribution<float>(0, 1)(rng) < 0.02f ? 20.0f : 1.0f);
    const PackedWeight w = pack_weight(codes.data(), scales.data(), zeros.data(), s.rows, s.cols, s.blocks);
    QuantizedActivations qx;
    quantize_activations(x.data(), s.tokens, w, {std::vector<double>(size_t(nb), 0.9)}, qx, isa);
    // The activation codes without padding, for the reference.
    std::vector<int8_t> xc(size_t(s.tokens * s.cols));
    for (int64_t t = 0; t < s.tokens; ++t)
      for (int64_t b = 0; b < nb; ++b)
        for (int64_t k = s.blocks[size_t(b)].begin; k < s.blocks[size_t(b)].end; ++k)
          xc[size_t(t * s.cols + k)] = qx.codes[size_t(t * qx.padded_cols + w.x_offset[size_t(b)] + k - s.blocks[size_t(b)].begin)];
    std::vector<double> ref(size_t(s.tokens * s.rows));
    qgemm_reference(xc.data(), qx.scales.data(), s.tokens, codes.data(), scales.data(), zeros.data(), s.rows, s.cols,
                    s.blocks, ref.data());
    double magnitude = 0;
    for (double v : ref) magnitude = std::max(magnitude, std::fabs(v));
    std::vector<float> y(size_t(s.tokens * s.rows), std::numeric_limits<float>::quiet_NaN());
    qgemm(qx, w, y.data(), isa);
    double worst = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      ASSERT_TRUE(std::isfinite(y[i])) << "element " << i << " not written";
      worst = std::max(worst, std::fabs(double(y[i]) - ref[i]));
    }
    EXPECT_LT(worst, 1e-5 * magnitude) << isa_name(isa) << ": max |Δ| " << worst << " of max |y| " << magnitude;
  }
}

}  // namespace

TEST(QGemm, ScalarKernelMatchesTheDefinition) { check_isa(Isa::kScalar); }
TEST(QGemm, Avx512VnniKernelMatchesTheDefinition) { check_isa(Isa::kAvx512Vnni); }

TEST(QGemm, ActivationCodesFollowTheFakeQuantFormula) {
  // INT4 groups of 16 and 3 (a ragged tail), INT8 salient 5: vector widths and tails both.
  const std::vector<ColumnBlock> blocks = {{0, 16, 4}, {16, 19, 4}, {19, 24, 8}};
  std::vector<int8_t> codes(24, 0);
  std::vector<float> scales(blocks.size(), 1.0f), zeros(blocks.size(), 0.0f);
  const PackedWeight w = pack_weight(codes.data(), scales.data(), zeros.data(), 1, 24, blocks);
  std::vector<float> x(24);
  for (int k = 0; k < 24; ++k) x[size_t(k)] = float(k % 7) - 3.5f + 0.01f * float(k);
  x[20] = 0.5f * x[21];  // a tie-free value near another's half
  const double clip[] = {1.0, 0.9, 1.0};
  // The same row read through a gather index (the reorder fused into the pass): x sits reversed
  // inside a wider row.
  std::vector<float> wide(30, 100.0f);
  std::vector<int32_t> gather(24);
  for (int k = 0; k < 24; ++k) {
    gather[size_t(k)] = 29 - k;
    wide[size_t(29 - k)] = x[size_t(k)];
  }
  for (Isa isa : available_isas())
    for (bool gathered : {false, true}) {
      SCOPED_TRACE(testing::Message() << isa_name(isa) << (gathered ? ", gathered" : ""));
      QuantizedActivations q;
      q.codes.assign(64, 99);  // poisoned: padding must be written as zeros
      if (gathered) quantize_activations(wide.data(), 1, w, {{1.0, 0.9, 1.0}}, q, isa, gather.data(), 30);
      else quantize_activations(x.data(), 1, w, {{1.0, 0.9, 1.0}}, q, isa);
      for (size_t b = 0; b < blocks.size(); ++b) {
        double absmax = 0;
        for (int64_t k = blocks[b].begin; k < blocks[b].end; ++k) absmax = std::max(absmax, std::fabs(double(x[size_t(k)])));
        const float scale = float(2 * absmax * clip[b] * (1 + 1.0 / 65536) / double((1 << blocks[b].bits) - 1));
        EXPECT_FLOAT_EQ(q.scales[b], scale);
        int sum = 0;
        for (int64_t k = blocks[b].begin; k < blocks[b].end; ++k) {
          const double lo = -(1 << (blocks[b].bits - 1)), hi = (1 << (blocks[b].bits - 1)) - 1;
          const int want = int(std::clamp(std::nearbyint(double(x[size_t(k)] / q.scales[b])), lo, hi));
          EXPECT_EQ(q.codes[size_t(w.x_offset[b] + k - blocks[b].begin)], want) << k;
          sum += want;
        }
        for (int64_t k = blocks[b].end - blocks[b].begin; k < w.padded[b]; ++k)
          EXPECT_EQ(q.codes[size_t(w.x_offset[b] + k)], 0) << "padding of block " << b;
        EXPECT_EQ(q.sums[b], sum);
      }
    }
}

TEST(QGemm, BadLayoutsAreRefused) {
  std::vector<int8_t> codes(16, 0);
  std::vector<float> scales(2, 1.0f), zeros(2, 0.0f);
  EXPECT_THROW(pack_weight(codes.data(), scales.data(), zeros.data(), 1, 16, {{0, 8, 4}, {9, 16, 4}}), Error);
  EXPECT_THROW(pack_weight(codes.data(), scales.data(), zeros.data(), 1, 16, {{0, 16, 3}}), Error);
  codes[3] = 8;  // outside INT4
  EXPECT_THROW(pack_weight(codes.data(), scales.data(), zeros.data(), 1, 16, {{0, 16, 4}}), Error);
}
