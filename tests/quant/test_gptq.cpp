#include <gtest/gtest.h>
#include <torch/torch.h>

#include "quant/gptq.h"
#include "quant/quantizer.h"
#include "util/error.h"

namespace toga {
namespace {

using torch::Tensor;
using torch::indexing::None;
using torch::indexing::Slice;

QuantSpec spec(int bits, bool symmetric, int group = 0) {
  QuantSpec s;
  s.bits = bits;
  s.symmetric = symmetric;
  s.group_size = group;
  return s;
}

// Correlated calibration inputs X [in, n] with uneven channel scales, and H = (2/n) X X^T.
Tensor correlated_inputs(int64_t in, int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  const Tensor mix = torch::eye(in, torch::kDouble) + 0.4 * torch::randn({in, in}, torch::kDouble);
  const Tensor gain = torch::exp(torch::randn({in, 1}, torch::kDouble));
  return gain * mix.mm(torch::randn({in, n}, torch::kDouble));
}
Tensor hessian(const Tensor& x) { return 2.0 / static_cast<double>(x.size(1)) * x.mm(x.t()); }

struct Naive {
  Tensor q;      // [out, in] in processing order
  Tensor codes;  // same
  double loss = 0;
};

// OBQ/GPTQ as the paper states it, in float64: one column at a time, the error spread over every
// remaining column at once, and the inverse Hessian explicitly downdated after each column.
Naive naive_gptq(const Tensor& w_in, const Tensor& h_in, const GptqOptions& o) {
  Tensor W = w_in.to(torch::kDouble).clone();
  Tensor H = h_in.to(torch::kDouble).clone();
  const int64_t cols = W.size(1), n_low = cols - o.k_salient;
  for (int64_t j = 0; j < cols; ++j)
    if (H[j][j].item<double>() == 0) {
      H[j][j] = 1.0;
      W.index_put_({Slice(), j}, 0.0);
    }
  if (o.act_order) {
    const Tensor order = torch::cat({torch::argsort(H.diagonal().index({Slice(0, n_low)}), true, 0, true),
                                     torch::arange(n_low, cols, torch::kLong)});
    W = W.index({Slice(), order});
    H = H.index({order}).index({Slice(), order});
  }
  H += o.damp * H.diagonal().mean() * torch::eye(cols, torch::kDouble);
  Tensor Hinv = torch::inverse(H);

  Naive r;
  r.q = torch::zeros_like(W);
  r.codes = torch::zeros_like(W);
  GroupParams p;
  Tensor pruned;  // SparseGPT: [rows, block] of the current block
  for (int64_t j = 0; j < cols; ++j) {
    if (o.sparsity > 0 && j % o.block_size == 0) {
      // Saliency w² / d_j with d_j = [H_{j:, j:}⁻¹]_00, the downdated inverse-Hessian diagonal when
      // column j is reached (SparseGPT's w² / U_jj², U the Cholesky factor), computed directly.
      const int64_t end = std::min(j + o.block_size, cols);
      Tensor d = torch::empty({end - j}, torch::kDouble);
      for (int64_t c = j; c < end; ++c) d[c - j] = torch::inverse(H.index({Slice(c, None), Slice(c, None)}))[0][0];
      const Tensor score = W.index({Slice(), Slice(j, end)}).square() / d.unsqueeze(0);
      const int64_t k = std::llround(o.sparsity * double(score.numel()));
      // Lowest k; the production code breaks ties by column-major position, so rank the transpose.
      const Tensor ranked = torch::argsort(score.t().flatten(), true);
      pruned = torch::zeros({score.numel()}, torch::kBool).index_fill_(0, ranked.narrow(0, 0, k), true).view({end - j, -1}).t();
    }
    if (o.prune_n > 0 && j % o.prune_m == 0) {
      // n:m: the n lowest w² / d_c per row among columns [j, j + m).
      const int64_t end = std::min(j + o.prune_m, cols);
      Tensor d = torch::empty({end - j}, torch::kDouble);
      for (int64_t c = j; c < end; ++c) d[c - j] = torch::inverse(H.index({Slice(c, None), Slice(c, None)}))[0][0];
      const Tensor score = W.index({Slice(), Slice(j, end)}).square() / d.unsqueeze(0);
      pruned = torch::zeros_like(score, torch::kBool).scatter_(1, std::get<1>(score.topk(o.prune_n, 1, false)), true);
    }
    const bool salient = j >= n_low;
    QuantSpec s = salient ? o.high : o.low;
    if (!o.group_bits.empty()) s.bits = o.group_bits[size_t(j / o.low.group_size)];
    const int64_t start = salient ? n_low : 0;
    const int64_t size = s.group_size > 0 ? s.group_size : (salient ? cols - n_low : n_low);
    if ((j - start) % size == 0) {
      const Tensor columns = W.index({Slice(), Slice(j, std::min(j + size, salient ? cols : n_low))});
      p = o.fit ? o.fit(columns, s) : find_params(columns, s);
    }
    const Tensor w = W.index({Slice(), j}).clone();
    Tensor kept = o.sparsity > 0 ? w.masked_fill(pruned.index({Slice(), j % o.block_size}), 0.0) : w;
    if (o.prune_n > 0) kept = w.masked_fill(pruned.index({Slice(), j % o.prune_m}), 0.0);
    if (o.keep.defined()) kept = w.masked_fill(o.keep.index({Slice(), j}).logical_not(), 0.0);
    const Tensor code = quantize_codes(kept.unsqueeze(1), p, s);
    const Tensor q = (p.scale * (code - p.zero)).squeeze(1);
    const double d = Hinv[j][j].item<double>();
    r.loss += (w - q).square().sum().item<double>() / (2 * d);
    W.index({Slice(), Slice(j, None)}) -= torch::outer((w - q) / d, Hinv.index({j, Slice(j, None)}));
    r.q.index_put_({Slice(), j}, q);
    r.codes.index_put_({Slice(), j}, code.squeeze(1));
    Hinv = Hinv - torch::outer(Hinv.index({Slice(), j}), Hinv.index({j, Slice()})) / d;
  }
  return r;
}

struct Case {
  const char* name;
  GptqOptions options;
};

std::vector<Case> cases() {
  std::vector<Case> out;
  GptqOptions o;
  o.block_size = 16;
  o.low = spec(4, true);
  out.push_back({"per-row 4-bit", o});
  o.low = spec(3, false, 12);  // groups of 12 straddle the 16-column blocks
  out.push_back({"asym 3-bit g12", o});
  o.low = spec(4, true, 8);
  o.act_order = true;
  out.push_back({"act-order g8", o});
  o.low = spec(2, false, 8);  // 38 low columns: a ragged 6-column tail group
  o.high = spec(8, true);
  o.k_salient = 10;
  out.push_back({"mixed 2/8-bit act-order", o});
  o.act_order = false;
  o.low = spec(1, true, 16);
  o.low.binary_centered = true;
  o.high = spec(4, false);
  o.k_salient = 8;
  out.push_back({"1-bit + 4-bit salient", o});
  o.low = spec(3, true, 0);
  o.low.mse_clip = true;
  o.high = spec(8, false, 4);
  o.k_salient = 12;
  o.act_order = true;
  out.push_back({"mse clip + grouped salient", o});
  return out;
}

Tensor original_order(const GptqResult& r) {
  const Tensor q = dequantize(r.weight);
  return torch::zeros_like(q).index_copy_(1, r.perm, q);
}

// SparseGPT (GPTQ with pruning, joint mode) against the naive loop with the saliency computed from
// explicit inverses: the same codes, exactly the asked fraction of every block zero.
TEST(Gptq, SparseGptMatchesNaiveFloat64Reference) {
  torch::manual_seed(22);
  const Tensor W = torch::randn({16, 48}, torch::kDouble);
  const Tensor H = hessian(correlated_inputs(48, 200, 23));
  GptqOptions o;
  o.block_size = 16;
  o.sparsity = 0.5;
  for (const QuantSpec low : {spec(4, true), spec(3, false, 8)}) {
    o.low = low;
    const Naive ref = naive_gptq(W, H, o);
    const GptqResult r = gptq_quantize(W, H, o);
    EXPECT_TRUE(torch::equal(r.weight.codes.to(torch::kDouble), ref.codes));
    EXPECT_TRUE(torch::allclose(dequantize(r.weight), ref.q, 1e-10, 1e-10));
    const Tensor q = dequantize(r.weight);
    for (int64_t b = 0; b < 48; b += 16)
      EXPECT_GE((q.narrow(1, b, 16) == 0).sum().item<int64_t>(), 16 * 16 / 2) << "block " << b;
    // Pruning costs more than quantizing alone.
    GptqOptions dense = o;
    dense.sparsity = 0;
    const Tensor qd = dequantize(gptq_quantize(W, H, dense).weight);
    EXPECT_GT(((W - q).mm(H) * (W - q)).sum().item<double>(), ((W - qd).mm(H) * (W - qd)).sum().item<double>());
  }
  // The compensation is what SparseGPT adds: at 8 bits (quantization nearly free) its output error is
  // far below that of the same zeros without it.
  o.low = spec(8, true);
  const Tensor q8 = dequantize(gptq_quantize(W, H, o).weight);
  const Tensor masked = W.masked_fill(q8 == 0, 0.0);
  EXPECT_LT(((W - q8).mm(H) * (W - q8)).sum().item<double>(), 0.8 * ((W - masked).mm(H) * (W - masked)).sum().item<double>());
  o.low = spec(1, true);
  EXPECT_THROW(gptq_quantize(W, H, o), Error);
}

// The other pruning rules and SliM-LLM's per-group widths against the same naive loop: SparseGPT's
// 2:4 (two zeros in every four columns of a row), a fixed keep mask (OBR's), per-group bit widths
// (1-bit groups binarized) and a custom range fit.
TEST(Gptq, NmFixedMaskAndPerGroupWidthsMatchNaiveFloat64Reference) {
  torch::manual_seed(24);
  const Tensor W = torch::randn({12, 40}, torch::kDouble);
  const Tensor H = hessian(correlated_inputs(40, 200, 25));
  auto check = [&](const GptqOptions& o, const char* what) {
    const Naive ref = naive_gptq(W, H, o);
    const GptqResult r = gptq_quantize(W, H, o);
    EXPECT_TRUE(torch::equal(r.weight.codes.to(torch::kDouble), ref.codes)) << what;
    EXPECT_TRUE(torch::allclose(dequantize(r.weight), ref.q, 1e-10, 1e-10)) << what;
    return dequantize(r.weight);
  };
  GptqOptions o;
  o.block_size = 16;
  o.low = spec(4, true);
  o.prune_n = 2, o.prune_m = 4;
  const Tensor q24 = check(o, "2:4");
  EXPECT_TRUE(((q24.reshape({12, 10, 4}) == 0).sum(-1) >= 2).all().item<bool>());
  o.prune_n = o.prune_m = 0;
  o.keep = torch::rand({12, 40}) > 0.5;
  const Tensor qk = check(o, "keep mask");
  EXPECT_TRUE((qk.masked_select(o.keep.logical_not()) == 0).all().item<bool>());
  o.keep = torch::Tensor();
  o.low = spec(2, false, 8);
  o.low.binary_centered = true;
  o.group_bits = {1, 2, 3, 2, 3};
  const GptqResult widths = gptq_quantize(W, H, o);
  for (size_t g = 0; g < 5; ++g) EXPECT_EQ(widths.weight.groups[g].bits, o.group_bits[g]);
  check(o, "per-group widths");
  o.fit = [](const Tensor& x, const QuantSpec& s) {
    GroupParams p = find_params(x, s);
    if (s.bits > 1) p.scale = p.scale * 0.9;
    return p;
  };
  check(o, "custom fit");
  o.group_bits = {1, 2};
  EXPECT_THROW(gptq_quantize(W, H, o), Error);
  o.group_bits.clear();
  o.prune_n = 2, o.prune_m = 4, o.sparsity = 0.5;
  EXPECT_THROW(gptq_quantize(W, H, o), Error) << "one pruning rule at a time";
}

// Blocked, lazily updated GPTQ with the Cholesky trick computes exactly what the naive OBQ loop does.
TEST(Gptq, MatchesNaiveFloat64Reference) {
  torch::manual_seed(20);
  const Tensor W = torch::randn({16, 48}, torch::kDouble);
  const Tensor H = hessian(correlated_inputs(48, 200, 21));
  for (const auto& c : cases()) {
    SCOPED_TRACE(c.name);
    const Naive ref = naive_gptq(W, H, c.options);
    const GptqResult r64 = gptq_quantize(W, H, c.options);
    EXPECT_TRUE(torch::equal(r64.weight.codes.to(torch::kDouble), ref.codes));
    EXPECT_TRUE(torch::allclose(dequantize(r64.weight), ref.q, 1e-10, 1e-10));
    EXPECT_NEAR(r64.loss, ref.loss, 1e-9 * ref.loss);
    // The production float32 path agrees to float32 accuracy.
    const GptqResult r32 = gptq_quantize(W.to(torch::kFloat), H.to(torch::kFloat), c.options);
    EXPECT_EQ(r32.weight.scales.scalar_type(), torch::kFloat);
    EXPECT_TRUE(torch::allclose(dequantize(r32.weight).to(torch::kDouble), ref.q, 1e-5, 1e-5))
        << "codes differing: " << (r32.weight.codes.to(torch::kDouble) != ref.codes).sum().item<int64_t>();
    EXPECT_NEAR(r32.loss, ref.loss, 1e-5 * ref.loss);
    EXPECT_TRUE(torch::equal(r32.perm, r64.perm));
  }
}

TEST(Gptq, BlockSizeDoesNotChangeTheResult) {
  torch::manual_seed(22);
  const Tensor W = torch::randn({8, 40}, torch::kDouble);
  const Tensor H = hessian(correlated_inputs(40, 160, 23));
  for (const auto& c : cases()) {
    SCOPED_TRACE(c.name);
    GptqOptions o = c.options;
    o.block_size = 128;
    const GptqResult a = gptq_quantize(W, H, o);
    for (int64_t b : {1, 5, 16, 39}) {
      o.block_size = b;
      const GptqResult r = gptq_quantize(W, H, o);
      EXPECT_TRUE(torch::equal(r.weight.codes, a.weight.codes)) << b;
      EXPECT_TRUE(torch::allclose(dequantize(r.weight), dequantize(a.weight), 1e-10, 1e-10)) << b;
    }
  }
}

// OBS bookkeeping: the summed column losses are the damped quadratic error of the final weights.
TEST(Gptq, LossIsTheHessianWeightedError) {
  torch::manual_seed(24);
  const Tensor W = torch::randn({12, 48}, torch::kDouble);
  const Tensor H = hessian(correlated_inputs(48, 300, 25));
  for (const auto& c : cases()) {
    SCOPED_TRACE(c.name);
    const GptqResult r = gptq_quantize(W, H, c.options);
    const Tensor damped = H + c.options.damp * H.diagonal().mean() * torch::eye(48, torch::kDouble);
    const Tensor delta = W - original_order(r);
    const double quad = 0.5 * (delta.mm(damped) * delta).sum().item<double>();
    EXPECT_NEAR(r.loss, quad, 1e-8 * quad);
  }
}

TEST(Gptq, ActOrderPermutesOnlyTheLowPartition) {
  const Tensor H = hessian(correlated_inputs(48, 200, 26));
  GptqOptions o;
  o.low = spec(4, true, 8);
  o.high = spec(8, true);
  o.k_salient = 10;
  o.act_order = true;
  const GptqResult r = gptq_quantize(torch::randn({4, 48}), H, o);
  EXPECT_TRUE(torch::equal(r.perm.index({Slice(38, None)}), torch::arange(38, 48, torch::kLong)));
  const Tensor low_diag = H.diagonal().index({r.perm.index({Slice(0, 38)})});
  EXPECT_TRUE((low_diag.index({Slice(0, -1)}) >= low_diag.index({Slice(1, None)})).all().item<bool>());
  EXPECT_TRUE(torch::equal(std::get<0>(torch::sort(r.perm)), torch::arange(48, torch::kLong)));
  // Groups are contiguous in the permuted order: 5 low groups (the last 6 wide) and one salient.
  ASSERT_EQ(r.weight.groups.size(), 6u);
  EXPECT_EQ(r.weight.groups[4].col_begin, 32);
  EXPECT_EQ(r.weight.groups[4].col_end, 38);
}

TEST(Gptq, DeadInputsAreZeroed) {
  torch::manual_seed(27);
  Tensor X = correlated_inputs(24, 100, 28);
  X.index_put_({3}, 0.0);
  X.index_put_({17}, 0.0);
  const Tensor H = hessian(X);
  const Tensor W = torch::randn({6, 24}, torch::kDouble);
  GptqOptions o;
  o.low = spec(4, false, 8);
  o.block_size = 16;
  const GptqResult r = gptq_quantize(W, H, o);
  const Tensor q = original_order(r);
  EXPECT_TRUE(torch::equal(q.index({Slice(), 3}), torch::zeros(6, torch::kDouble)));
  EXPECT_TRUE(torch::equal(q.index({Slice(), 17}), torch::zeros(6, torch::kDouble)));
  const Naive ref = naive_gptq(W, H, o);
  EXPECT_TRUE(torch::allclose(dequantize(r.weight), ref.q, 1e-10, 1e-10));
  // With act-order the tied dead columns keep their relative order.
  o.act_order = true;
  const GptqResult ra = gptq_quantize(W, H, o);
  EXPECT_TRUE(torch::allclose(dequantize(ra.weight), naive_gptq(W, H, o).q, 1e-10, 1e-10));
  EXPECT_TRUE(torch::equal(original_order(ra).index({Slice(), torch::tensor({3, 17})}), torch::zeros({6, 2}, torch::kDouble)));
}

// What GPTQ is for: on correlated inputs its output error beats round-to-nearest's.
TEST(Gptq, BeatsRoundToNearestOnOutputError) {
  torch::manual_seed(29);
  const Tensor X = correlated_inputs(128, 1024, 30).to(torch::kFloat);
  const Tensor H = hessian(X);
  const Tensor W = torch::randn({64, 128});
  auto out_err = [&](const Tensor& q) { return (W - q).mm(X).square().sum().item<double>(); };
  struct Setting {
    QuantSpec low, high;
    int64_t k;
    bool act_order;
  };
  QuantSpec bin = spec(1, true, 32);
  bin.binary_centered = true;
  for (const Setting& s : {Setting{spec(3, true), spec(8, true), 0, false},
                           Setting{spec(4, false, 32), spec(8, true), 0, true},
                           Setting{spec(3, false, 32), spec(8, true), 16, false},
                           Setting{spec(2, false, 32), spec(8, true), 16, true},
                           Setting{bin, spec(4, false), 16, true}}) {
    GptqOptions o;
    o.low = s.low;
    o.high = s.high;
    o.k_salient = s.k;
    o.act_order = s.act_order;
    const GptqResult r = gptq_quantize(W, H, o);
    const double gptq = out_err(original_order(r));
    const double rtn = out_err(fake_quantize_weight(W, s.low, s.high, s.k));
    EXPECT_LT(gptq, 0.8 * rtn) << "bits " << s.low.bits << ": gptq " << gptq << " rtn " << rtn;
  }
}

TEST(Gptq, RejectsBadInputs) {
  const Tensor W = torch::randn({4, 8});
  GptqOptions o;
  o.low = spec(4, true);
  EXPECT_THROW(gptq_quantize(W, torch::eye(7), o), Error);
  o.k_salient = 9;
  EXPECT_THROW(gptq_quantize(W, torch::eye(8), o), Error);
  o.k_salient = 2;  // high left at 16 bits
  EXPECT_THROW(gptq_quantize(W, torch::eye(8), o), Error);
  o.k_salient = 0;
  o.damp = 0;
  EXPECT_THROW(gptq_quantize(W, -torch::eye(8), o), Error);
}

}  // namespace
}  // namespace toga
