// BiLLM's pieces against float64 formulas: the row binarizer (order 1 and 2, masked) against a plain
// loop; with an identity Hessian (no cross-column curvature) the result is each block's binarization
// with the returned masks, exactly; with a correlated Hessian the reported loss is
// 1/2 tr((W − Q) H (W − Q)ᵀ) and beats plain per-row sign binarization; the bit counts follow from
// the salient columns.
#include <gtest/gtest.h>

#include <cmath>

#include "quant/billm.h"
#include "quant/quantizer.h"
#include "util/error.h"

using namespace toga;
using torch::Tensor;

TEST(Billm, RowBinarizerMatchesTheFormula) {
  torch::manual_seed(1);
  const Tensor x = torch::randn({3, 10}, torch::kFloat64);
  const Tensor mask = torch::rand({3, 10}, torch::kFloat64) > 0.3;
  for (int order : {1, 2}) {
    const Tensor got = binarize_rows(x, mask, order);
    for (int64_t i = 0; i < 3; ++i) {
      std::vector<double> v, idx;
      for (int64_t j = 0; j < 10; ++j)
        if (mask[i][j].item<bool>()) v.push_back(x[i][j].item<double>()), idx.push_back(double(j));
      std::vector<double> approx(v.size(), 0.0), res = v;
      for (int o = 0; o < order; ++o) {
        double mu = 0, alpha = 0;
        for (double r : res) mu += r;
        mu /= double(std::max<size_t>(res.size(), 1));
        for (double r : res) alpha += std::abs(r - mu);
        alpha /= double(std::max<size_t>(res.size(), 1));
        for (size_t t = 0; t < res.size(); ++t) {
          const double b = mu + alpha * (res[t] - mu >= 0 ? 1.0 : -1.0);
          approx[t] += b;
          res[t] -= b;
        }
      }
      size_t t = 0;
      for (int64_t j = 0; j < 10; ++j) {
        const double want = mask[i][j].item<bool>() ? approx[t++] : 0.0;
        EXPECT_NEAR(got[i][j].item<double>(), want, 1e-12) << order << " " << i << " " << j;
      }
    }
  }
  EXPECT_THROW(binarize_rows(x, mask, 3), Error);
}

TEST(Billm, IdentityHessianGivesEachBlocksBinarizationWithItsMasks) {
  torch::manual_seed(2);
  const int64_t rows = 6, cols = 40;
  const Tensor w = torch::randn({rows, cols}, torch::kFloat64) * torch::linspace(0.1, 3, cols, torch::kFloat64);
  BillmOptions o;
  o.block_size = 16;  // blocks 16, 16 and a ragged 8
  o.salient_candidates = 6;
  const auto r = billm_quantize(w, torch::eye(cols, torch::kFloat64), o);
  for (int64_t c0 = 0; c0 < cols; c0 += o.block_size) {
    const int64_t B = std::min(o.block_size, cols - c0);
    const Tensor wb = w.narrow(1, c0, B);
    const Tensor sal = r.salient.narrow(0, c0, B).unsqueeze(0).expand({rows, B});
    const Tensor sparse = r.sparse.narrow(1, c0, B);
    EXPECT_FALSE(sparse.logical_and(sal).any().item<bool>()) << "salient weights are in neither group";
    EXPECT_GE(r.salient.narrow(0, c0, B).sum().item<int64_t>(), 1);
    const Tensor want = binarize_rows(wb, sal, 2) + binarize_rows(wb, sparse, 1) +
                        binarize_rows(wb, sal.logical_not().logical_and(sparse.logical_not()), 1);
    EXPECT_LT((r.weight.narrow(1, c0, B) - want).abs().max().item<double>(), 1e-12) << "block at " << c0;
  }
}

TEST(Billm, CorrelatedHessianLossIsTheFormulaAndBeatsSignBinarization) {
  torch::manual_seed(3);
  const int64_t rows = 8, cols = 48;
  const Tensor x = torch::randn({200, cols}, torch::kFloat64).matmul(torch::randn({cols, cols}, torch::kFloat64) * 0.3 +
                                                                      torch::eye(cols, torch::kFloat64));
  const Tensor h = 2.0 / 200 * x.t().matmul(x);
  const Tensor w = torch::randn({rows, cols}, torch::kFloat64);
  BillmOptions o;
  o.block_size = 16;
  o.salient_candidates = 8;
  const auto r = billm_quantize(w, h, o);
  Tensor hd = h.clone();
  hd.diagonal().add_(o.damp * h.diagonal().mean());
  const Tensor e = w - r.weight;
  EXPECT_NEAR(r.loss, 0.5 * torch::trace(e.matmul(hd).matmul(e.t())).item<double>(), 1e-9 * r.loss);
  const Tensor sign = binarize_rows(w, torch::ones_like(w, torch::kBool), 1), es = w - sign;
  EXPECT_LT(r.loss, 0.5 * torch::trace(es.matmul(hd).matmul(es.t())).item<double>());
  const double sf = r.salient.sum().item<double>() / double(cols);
  EXPECT_DOUBLE_EQ(r.bits_paper, 1 + sf);
  EXPECT_DOUBLE_EQ(r.bits_with_flags, 2.0);
  EXPECT_NEAR(r.bits_total, 2.0 + 16.0 * 8 * 3 * rows / double(rows * cols), 1e-12);  // 3 blocks of 8 fp16 per row
}

TEST(Billm, StoredCodebookGroupsDequantizeToTheResultExactly) {
  torch::manual_seed(5);
  const int64_t rows = 7, cols = 44;
  const Tensor w = torch::randn({rows, cols}) * torch::linspace(0.2, 2, cols);
  const Tensor x = torch::randn({64, cols});
  BillmOptions o;
  o.block_size = 16;
  o.salient_candidates = 6;
  const auto r = billm_quantize(w, 2.0 / 64 * x.t().matmul(x), o);
  // Stored column j is W's column perm[j]: each block's non-salient columns, then its salient ones.
  EXPECT_TRUE(torch::equal(std::get<0>(r.perm.sort()), torch::arange(cols)));
  EXPECT_TRUE(torch::equal(dequantize(r.stored), r.weight.index_select(1, r.perm)));
  for (const auto& g : r.stored.groups) {
    EXPECT_TRUE(g.codebook);
    EXPECT_EQ(g.bits, 2);
  }
  EXPECT_EQ(r.stored.levels.size(1), 4 * int64_t(r.stored.groups.size()));
  EXPECT_GE(r.stored.codes.min().item<int>(), 0);
  EXPECT_LE(r.stored.codes.max().item<int>(), 3);
  // The salient groups hold exactly the salient columns, block by block.
  int64_t salient_cols = 0;
  for (size_t i = 0; i + 1 < r.stored.groups.size(); ++i) {
    const auto& g = r.stored.groups[i];
    const bool salient = r.salient[r.perm[g.col_begin].item<int64_t>()].item<bool>();
    for (int64_t c = g.col_begin; c < g.col_end; ++c) EXPECT_EQ(r.salient[r.perm[c].item<int64_t>()].item<bool>(), salient);
    if (salient) salient_cols += g.col_end - g.col_begin;
  }
  EXPECT_LE(salient_cols, r.salient.sum().item<int64_t>());
}
