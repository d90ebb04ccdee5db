// OBR's pieces against independent references: Wanda's mask against a sort of the scores (50 % per
// row, and 2:4); each closed-form compensation against a direct least-squares solve of the same
// problem on the calibration inputs (H = XᵀX): the pruning error moved into the kept weights, and
// the first part's quantization error moved into the later kept columns.
#include <gtest/gtest.h>

#include "quant/obr.h"
#include "quant/quantizer.h"
#include "util/error.h"

using namespace toga;
using torch::Tensor;

TEST(Obr, WandaMaskPrunesTheLowestScoresPerRowAndTwoOfEveryFour) {
  torch::manual_seed(1);
  const Tensor w = torch::randn({5, 16}, torch::kFloat64), s = torch::rand({16}, torch::kFloat64) + 0.1;
  const Tensor score = w.abs() * s.sqrt().unsqueeze(0);
  const Tensor m = wanda_mask(w, s, 0.5);
  for (int64_t r = 0; r < 5; ++r) {
    EXPECT_EQ(m[r].sum().item<int64_t>(), 8);
    const double kept_min = score[r].masked_select(m[r]).min().item<double>();
    const double pruned_max = score[r].masked_select(m[r].logical_not()).max().item<double>();
    EXPECT_GT(kept_min, pruned_max) << "row " << r;
  }
  const Tensor m24 = wanda_mask(w, s, 0, true).reshape({5, 4, 4});
  const Tensor sc = score.reshape({5, 4, 4});
  EXPECT_TRUE(torch::equal(m24.sum(-1), torch::full({5, 4}, 2, torch::kLong)));
  EXPECT_TRUE(torch::equal(sc.masked_fill(m24.logical_not(), 1e9).amin(-1) >= sc.masked_fill(m24, -1).amax(-1),
                           torch::ones({5, 4}, torch::kBool)));
  EXPECT_THROW(wanda_mask(torch::randn({2, 6}), torch::rand({6}), 0, true), Error);
}

TEST(Obr, CompensationsAreTheLeastSquaresSolutions) {
  torch::manual_seed(2);
  const int64_t n = 300, in = 12, rows = 4;
  const Tensor X = torch::randn({n, in}, torch::kFloat64).matmul(torch::randn({in, in}, torch::kFloat64) * 0.4 +
                                                                 torch::eye(in, torch::kFloat64));
  const Tensor H = X.t().matmul(X);
  const Tensor W = torch::randn({rows, in}, torch::kFloat64);
  const QuantSpec spec{4, true, 0};
  // Pruning only (alpha 0: no quantization compensation): δ_I = argmin ‖X_I δ − X_Z w_Z‖.
  const Tensor mask = wanda_mask(W, H.diagonal() / n, 0.5);
  const Tensor pruned = obr_compensate(W, H, mask, spec, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const Tensor I = mask[r].nonzero().flatten(), Z = mask[r].logical_not().nonzero().flatten();
    const Tensor delta = std::get<0>(torch::linalg_lstsq(X.index_select(1, I),
                                                         X.index_select(1, Z).matmul(W[r].index_select(0, Z)).unsqueeze(1)))
                             .squeeze(1);
    EXPECT_LT((pruned[r].index_select(0, I) - (W[r].index_select(0, I) + delta)).abs().max().item<double>(), 1e-9);
    EXPECT_EQ(pruned[r].index_select(0, Z).abs().max().item<double>(), 0.0);
  }
  // Quantization only (nothing pruned): the first half's rounding error e_E moved into the second
  // half, δ_R = argmin ‖X_R δ − X_E e_E‖, with Q fitted per row on the dense W.
  const Tensor all = torch::ones({rows, in}, torch::kBool);
  const Tensor comp = obr_compensate(W, H, all, spec, 0.5);
  const Tensor e = W - fake_quantize(W, spec);
  for (int64_t r = 0; r < rows; ++r) {
    const Tensor delta = std::get<0>(torch::linalg_lstsq(X.narrow(1, 6, 6), X.narrow(1, 0, 6).matmul(e[r].narrow(0, 0, 6)).unsqueeze(1)))
                             .squeeze(1);
    EXPECT_LT((comp[r].narrow(0, 6, 6) - (W[r].narrow(0, 6, 6) + delta)).abs().max().item<double>(), 1e-9);
    EXPECT_TRUE(torch::equal(comp[r].narrow(0, 0, 6), W[r].narrow(0, 0, 6))) << "E keeps w′ (quantized later)";
  }
  // The pruning compensation lowers the output error ‖X(W − W*)ᵀ‖.
  const double plain = X.matmul((W - W * mask).t()).pow(2).sum().item<double>();
  EXPECT_LT(X.matmul((W - pruned).t()).pow(2).sum().item<double>(), plain);
}

// The whole OBR step: Wanda's fraction kept per row, pruned weights exactly zero, every value on the
// dense-fitted per-row grid; OBR-RTN is the rounding of the compensated weights on that grid; OBR-GPTQ
// rounds the columns before the split the same way and has the lower output loss; 2:4 holds.
TEST(Obr, QuantizeHoldsPrunedWeightsAtZeroAndGptqBeatsRtn) {
  torch::manual_seed(3);
  const int64_t n = 400, in = 32, rows = 8;
  const Tensor X = torch::randn({n, in}, torch::kFloat64).matmul(torch::randn({in, in}, torch::kFloat64) * 0.4 +
                                                                 torch::eye(in, torch::kFloat64));
  const Tensor H = 2.0 / n * X.t().matmul(X);
  const Tensor W = torch::randn({rows, in}, torch::kFloat64);
  QuantSpec spec{4, true, 0};
  spec.mse_clip = true;
  ObrOptions o;
  o.gptq = false;
  const ObrResult rtn = obr_quantize(W, H, spec, o);
  o.gptq = true;
  o.block_size = 8;
  const ObrResult gptq = obr_quantize(W, H, spec, o);
  EXPECT_TRUE(torch::equal(rtn.keep, gptq.keep));
  EXPECT_TRUE(torch::equal(rtn.keep.sum(1), torch::full({rows}, in / 2, torch::kLong)));
  const Tensor q_rtn = dequantize(rtn.weight).to(torch::kFloat64), q_gptq = dequantize(gptq.weight).to(torch::kFloat64);
  for (const Tensor& q : {q_rtn, q_gptq}) EXPECT_TRUE((q.masked_select(rtn.keep.logical_not()) == 0).all().item<bool>());
  // OBR-RTN = round(compensated) on the grid fitted on the dense W.
  Tensor Hd = H.clone();
  Hd.diagonal().add_(0.01 * H.diagonal().mean());
  const Tensor comp = obr_compensate(W, Hd, rtn.keep, spec, 0.5) * rtn.keep.to(torch::kFloat64);
  const GroupParams dense = find_params(W, spec);
  EXPECT_TRUE(torch::equal(rtn.weight.codes.to(torch::kFloat64), quantize_codes(comp, dense, spec)));
  EXPECT_TRUE(torch::equal(gptq.weight.codes.narrow(1, 0, in / 2), rtn.weight.codes.narrow(1, 0, in / 2)));
  EXPECT_FALSE(torch::equal(gptq.weight.codes, rtn.weight.codes));
  EXPECT_LT(gptq.loss, rtn.loss);
  auto loss = [&](const Tensor& q) { return 0.5 * torch::trace((W - q).matmul(Hd).matmul((W - q).t())).item<double>(); };
  EXPECT_NEAR(gptq.loss, loss(q_gptq), 1e-4 * gptq.loss) << "fp32 scales";
  o.two_four = true;
  const ObrResult t = obr_quantize(W, H, spec, o);
  EXPECT_TRUE(((dequantize(t.weight).reshape({rows, in / 4, 4}) == 0).sum(-1) >= 2).all().item<bool>());
  EXPECT_THROW(obr_quantize(W, H, QuantSpec{4, true, 8}, o), Error) << "OBR's grid is per channel";
}
