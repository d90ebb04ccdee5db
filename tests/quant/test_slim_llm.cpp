// SliM-LLM's pieces against independent references: the group salience against d_j² =
// [(H_{j:,j:})⁻¹]₀₀ from a float64 inverse per column; the output KL against a naive double loop;
// SBA keeps the average at the target for equal groups, picks the candidate of lowest KL and moves
// the least / most salient groups; SQC's range search is the brute-force best of its 101
// multipliers; the GPTQ pass stores the allocated widths, beats RTN at the same widths on a
// correlated Hessian, and reports the true average when the last group is narrower.
#include <gtest/gtest.h>

#include <cmath>

#include "quant/slim_llm.h"
#include "util/error.h"

using namespace toga;
using torch::Tensor;

namespace {

Tensor correlated_hessian(const Tensor& x) { return 2.0 / double(x.size(0)) * x.t().matmul(x); }

Tensor correlated_inputs(int64_t n, int64_t in, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn({n, in}, torch::kFloat64).matmul(torch::randn({in, in}, torch::kFloat64) * 0.3 +
                                                       torch::eye(in, torch::kFloat64));
}

}  // namespace

TEST(SlimLlm, GroupSalienceUsesTheInverseHessianDiagonalOfTheRemainingColumns) {
  const int64_t in = 20, rows = 3, group = 8;
  const Tensor x = correlated_inputs(200, in, 1);
  Tensor H = correlated_hessian(x);
  H.diagonal().add_(0.01);
  const Tensor w = torch::randn({rows, in}, torch::kFloat64);
  const Tensor got = slim_group_salience(w, H, group);
  ASSERT_EQ(got.numel(), 3);  // 8, 8 and a 4-wide tail
  std::vector<double> want(3, 0.0);
  for (int64_t j = 0; j < in; ++j) {
    const double d2 = torch::inverse(H.narrow(0, j, in - j).narrow(1, j, in - j))[0][0].item<double>();
    for (int64_t r = 0; r < rows; ++r) want[size_t(j / group)] += std::pow(w[r][j].item<double>(), 2) / d2;
  }
  for (int g = 0; g < 3; ++g) EXPECT_NEAR(got[g].item<double>(), want[size_t(g)], 1e-9 * want[size_t(g)]) << g;
}

TEST(SlimLlm, OutputKlIsTheNaiveSum) {
  torch::manual_seed(2);
  const Tensor x = torch::randn({5, 6}, torch::kFloat64), w = torch::randn({4, 6}, torch::kFloat64);
  const Tensor wq = w + 0.2 * torch::randn({4, 6}, torch::kFloat64);
  double want = 0;
  for (int64_t t = 0; t < 5; ++t) {
    std::vector<double> a(4), b(4);
    double za = 0, zb = 0;
    for (int64_t o = 0; o < 4; ++o) {
      double sa = 0, sb = 0;
      for (int64_t i = 0; i < 6; ++i) sa += x[t][i].item<double>() * wq[o][i].item<double>(), sb += x[t][i].item<double>() * w[o][i].item<double>();
      a[size_t(o)] = std::exp(sa), b[size_t(o)] = std::exp(sb), za += a[size_t(o)], zb += b[size_t(o)];
    }
    for (size_t o = 0; o < 4; ++o) want += a[o] / za * std::log((a[o] / za) / (b[o] / zb));
  }
  EXPECT_NEAR(output_kl(x, wq, w), want / 5, 1e-12);
  EXPECT_NEAR(output_kl(x, w, w), 0.0, 1e-15);
}

TEST(SlimLlm, AllocationKeepsTheAverageAndPicksTheLowestKl) {
  const int64_t in = 64, rows = 12, group = 8;  // 8 groups: candidates i = 1, 2, 3
  const Tensor x = correlated_inputs(64, in, 3);
  torch::manual_seed(4);
  const Tensor w = torch::randn({rows, in}, torch::kFloat64) * torch::linspace(0.2, 2.0, in, torch::kFloat64);
  const Tensor sal = torch::rand({8}, torch::kFloat64);
  const QuantSpec base{3, false, group};
  const SlimAllocation a = slim_allocate_bits(w, sal, x, base);
  ASSERT_EQ(a.scores.size(), 3u);
  ASSERT_GE(a.shifted, 1);
  EXPECT_EQ(a.scores[size_t(a.shifted - 1)], *std::min_element(a.scores.begin(), a.scores.end()));
  double sum = 0;
  for (int b : a.bits) sum += b;
  EXPECT_DOUBLE_EQ(sum / 8, 3.0);
  const Tensor order = std::get<1>(sal.sort());
  for (int64_t k = 0; k < 8; ++k) {
    const int want = k < a.shifted ? 2 : k >= 8 - a.shifted ? 4 : 3;
    EXPECT_EQ(a.bits[size_t(order[k].item<int64_t>())], want) << "rank " << k;
  }
  // Each score is the KL of that candidate's RTN.
  std::vector<int> one(8, 3);
  one[size_t(order[0].item<int64_t>())] = 2;
  one[size_t(order[7].item<int64_t>())] = 4;
  EXPECT_NEAR(a.scores[0], output_kl(x, slim_rtn(w, one, base), w), 1e-12);
  // Fewer than four groups: no candidate, everything at b.
  const SlimAllocation few = slim_allocate_bits(w.narrow(1, 0, 24), sal.narrow(0, 0, 3), x.narrow(1, 0, 24), base);
  EXPECT_TRUE(few.scores.empty());
  EXPECT_EQ(few.bits, std::vector<int>(3, 3));
  EXPECT_THROW(slim_allocate_bits(w, sal, x, QuantSpec{1, false, group}), Error);
}

TEST(SlimLlm, RangeSearchIsTheBruteForceBestMultiplier) {
  torch::manual_seed(5);
  const Tensor x = torch::randn({6, 32}, torch::kFloat64) + 0.3;
  const QuantSpec spec{2, false, 0};
  const GroupParams got = slim_range_search(x, spec);
  const GroupParams base = find_params(x, spec);
  for (int64_t r = 0; r < 6; ++r) {
    double best = 1e300, best_scale = 0;
    for (int k = -50; k <= 50; ++k) {
      const double p = 1.0 + 0.1 * k / 50;
      const GroupParams c{base.scale.narrow(0, r, 1) * p, base.zero.narrow(0, r, 1)};
      const Tensor row = x.narrow(0, r, 1);
      const double e = (c.scale * (quantize_codes(row, c, spec) - c.zero) - row).abs().pow(2.4).sum().item<double>();
      if (e < best - 1e-15) best = e, best_scale = c.scale.item<double>();
    }
    EXPECT_NEAR(got.scale[r][0].item<double>(), best_scale, 1e-15) << r;
    EXPECT_EQ(got.zero[r][0].item<double>(), base.zero[r][0].item<double>());
  }
}

TEST(SlimLlm, GptqStoresTheAllocatedWidthsAndBeatsRtnAtThem) {
  const int64_t in = 72, rows = 16;  // groups of 16: four full and an 8-wide tail
  const Tensor x = correlated_inputs(400, in, 6);
  const Tensor H = correlated_hessian(x);
  torch::manual_seed(7);
  const Tensor w = torch::randn({rows, in}, torch::kFloat64);
  const QuantSpec base{2, false, 16};
  const SlimLlmResult r = slim_llm_quantize(w, H, x.narrow(0, 0, 128), base);
  ASSERT_EQ(r.gptq.weight.groups.size(), 5u);
  double bits = 0;
  for (size_t g = 0; g < 5; ++g) {
    const auto& cg = r.gptq.weight.groups[g];
    EXPECT_EQ(cg.bits, r.allocation.bits[g]);
    bits += double(cg.bits * (cg.col_end - cg.col_begin));
    const Tensor codes = r.gptq.weight.codes.narrow(1, cg.col_begin, cg.col_end - cg.col_begin);
    const QuantSpec s{cg.bits, false, 0};
    EXPECT_GE(codes.min().item<int>(), code_min(s));
    EXPECT_LE(codes.max().item<int>(), code_max(s));
  }
  EXPECT_DOUBLE_EQ(r.average_bits, bits / double(in));
  // The allocation scored 1-bit groups as μ ± α (centered), as GPTQ then stores them.
  QuantSpec centered = base;
  centered.binary_centered = true;
  ASSERT_FALSE(r.allocation.scores.empty());
  std::vector<int> first(5, 2);
  const Tensor sal = slim_group_salience(w, [&] {
    Tensor Ha = H.clone();
    Ha.diagonal().add_(0.01);
    return Ha;
  }(), 16);
  const Tensor ranked = std::get<1>(sal.sort());
  first[size_t(ranked[0].item<int64_t>())] = 1;
  first[size_t(ranked[4].item<int64_t>())] = 3;
  EXPECT_NEAR(r.allocation.scores[0], output_kl(x.narrow(0, 0, 128), slim_rtn(w, first, centered), w), 1e-12);
  for (size_t g = 0; g < 5; ++g)
    if (r.gptq.weight.groups[g].bits == 1) EXPECT_FALSE(r.gptq.weight.groups[g].symmetric) << "centered binarization";
  const Tensor q = dequantize(r.gptq.weight).to(torch::kFloat64), rtn = slim_rtn(w, r.allocation.bits, centered);
  Tensor Hd = H.clone();
  Hd.diagonal().add_(0.01);
  auto loss = [&](const Tensor& wq) { return torch::trace((w - wq).matmul(Hd).matmul((w - wq).t())).item<double>(); };
  EXPECT_LT(loss(q), loss(rtn));
}
