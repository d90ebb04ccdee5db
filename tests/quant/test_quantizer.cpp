#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "quant/quantizer.h"
#include "util/error.h"

namespace toga {
namespace {

using torch::Tensor;
using torch::indexing::None;
using torch::indexing::Slice;

QuantSpec spec(int bits, bool symmetric, int group = 0, double clip = 1.0) {
  QuantSpec s;
  s.bits = bits;
  s.symmetric = symmetric;
  s.group_size = group;
  s.clip_ratio = clip;
  return s;
}

int64_t distinct(const Tensor& t) { return std::get<0>(at::_unique(t.flatten())).numel(); }

// Every bit width, both symmetries: at most 2^b levels, all of them reached on a ramp that covers
// the range, codes inside the stored range, and |q - x| <= scale/2 everywhere (no clipping).
TEST(Quantizer, LevelsAndRoundingErrorEveryBitWidth) {
  const Tensor ramp = torch::linspace(-0.3, 1.7, 5000, torch::kFloat).unsqueeze(0);
  for (int bits = 1; bits <= 8; ++bits) {
    for (bool sym : {true, false}) {
      SCOPED_TRACE("bits " + std::to_string(bits) + (sym ? " sym" : " asym"));
      const QuantSpec s = spec(bits, sym);
      const Tensor q = fake_quantize(ramp, s);
      const int64_t levels = int64_t{1} << bits;
      EXPECT_LE(distinct(q), levels);
      const QuantizedWeight qw = quantize_weight(ramp, s);
      EXPECT_GE(qw.codes.min().item<int>(), code_min(s));
      EXPECT_LE(qw.codes.max().item<int>(), code_max(s));
      EXPECT_EQ(code_max(s) - code_min(s) + 1, levels);
      if (bits == 1) {
        EXPECT_EQ(distinct(q), 2);
        continue;
      }
      // Asymmetric uses all 2^b levels; unclipped symmetric leaves -2^(b-1) to clipped values.
      if (!sym) {
        EXPECT_EQ(distinct(q), levels);
      }
      const double scale = qw.scales.item<double>();
      EXPECT_LE((q - ramp).abs().max().item<double>(), scale / 2 * (1 + 1e-5));
      // A symmetric ramp over the whole [-max, max] reaches every level once clipped a little.
      if (sym) {
        const Tensor sym_ramp = torch::linspace(-1, 1, 5000, torch::kFloat).unsqueeze(0);
        EXPECT_EQ(distinct(fake_quantize(sym_ramp, spec(bits, true, 0, 0.9))), levels);
        EXPECT_EQ(distinct(fake_quantize(sym_ramp, s)), levels - 1);
        EXPECT_TRUE(torch::equal(fake_quantize(-ramp, s), -q));
      }
    }
  }
}

TEST(Quantizer, ClippedValuesStayWithinScaleHalfInsideTheClipRange) {
  torch::manual_seed(1);
  const Tensor x = torch::randn({6, 256});
  for (bool sym : {true, false}) {
    const QuantSpec s = spec(4, sym, 0, 0.85);
    const QuantizedWeight qw = quantize_weight(x, s);
    const Tensor q = dequantize(qw);
    const Tensor scale = qw.scales;                         // [6, 1]
    const Tensor lo = scale * (code_min(s) - qw.zeros);     // the grid's ends
    const Tensor hi = scale * (code_max(s) - qw.zeros);
    const Tensor inside = (x >= lo - scale / 2) & (x <= hi + scale / 2);
    EXPECT_LT(inside.to(torch::kFloat).mean().item<double>(), 1.0);  // the clip did bite
    const Tensor err = torch::where(inside, (q - x).abs(), torch::zeros_like(x));
    EXPECT_TRUE((err <= scale / 2 * (1 + 1e-5)).all().item<bool>());
  }
}

// Values already on a fitted grid quantize to themselves: every code of every width.
TEST(Quantizer, ExactOnGridValues) {
  torch::manual_seed(2);
  for (int bits = 1; bits <= 8; ++bits) {
    for (bool sym : {true, false}) {
      SCOPED_TRACE("bits " + std::to_string(bits) + (sym ? " sym" : " asym"));
      QuantSpec s = spec(bits, sym);
      s.binary_centered = !sym;
      const GroupParams p = find_params(torch::randn({5, 40}), s);
      const Tensor codes = torch::arange(code_min(s), code_max(s) + 1, torch::kFloat).expand({5, -1});
      const Tensor on_grid = p.scale * (codes - p.zero);
      EXPECT_TRUE(torch::equal(quantize_codes(on_grid, p, s), codes));
    }
  }
  // Asymmetric grids are also refitted exactly: a row spanning codes 0..2^b-1 gets its own scale back.
  for (int bits = 2; bits <= 8; ++bits) {
    const int qmax = (1 << bits) - 1;
    Tensor u = torch::randint(0, qmax + 1, {4, 64}).to(torch::kFloat);
    u.index_put_({Slice(), 0}, 0);
    u.index_put_({Slice(), 1}, qmax);
    const Tensor z = torch::randint(0, qmax + 1, {4, 1}).to(torch::kFloat);
    const Tensor x = 0.03 * (u - z);
    EXPECT_TRUE(torch::allclose(fake_quantize(x, spec(bits, false)), x, 0, 1e-6)) << bits;
  }
}

TEST(Quantizer, RaggedTailGroupMatchesSlices) {
  torch::manual_seed(3);
  const Tensor w = torch::randn({3, 20});
  for (bool sym : {true, false}) {
    const QuantSpec grouped = spec(3, sym, 8);
    const Tensor q = fake_quantize(w, grouped);
    const QuantizedWeight qw = quantize_weight(w, grouped);
    ASSERT_EQ(qw.groups.size(), 3u);
    EXPECT_EQ(qw.groups[2].col_begin, 16);
    EXPECT_EQ(qw.groups[2].col_end, 20);
    EXPECT_EQ(qw.scales.sizes(), (std::vector<int64_t>{3, 3}));
    for (int64_t b : {0, 8, 16}) {
      const int64_t e = std::min<int64_t>(b + 8, 20);
      const Tensor part = w.index({Slice(), Slice(b, e)});
      EXPECT_TRUE(torch::equal(q.index({Slice(), Slice(b, e)}), fake_quantize(part, spec(3, sym))));
    }
  }
}

TEST(Quantizer, PerTokenActivationsAndMixedPartitions) {
  torch::manual_seed(4);
  const Tensor x = torch::randn({2, 5, 64}) * torch::linspace(0.1, 3, 64);
  const QuantSpec low = spec(4, true, 16, 0.9), high = spec(8, true);
  // Each token is quantized on its own.
  const Tensor q = fake_quantize(x, low);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t < 5; ++t)
      EXPECT_TRUE(torch::equal(q[b][t], fake_quantize(x[b][t].unsqueeze(0), low)[0]));
  // Salient tail channels with the high spec, the rest with the low one.
  const Tensor m = fake_quantize_activation(x, low, high, 16);
  EXPECT_TRUE(torch::equal(m.index({"...", Slice(0, 48)}), fake_quantize(x.index({"...", Slice(0, 48)}), low)));
  EXPECT_TRUE(torch::equal(m.index({"...", Slice(48, None)}), fake_quantize(x.index({"...", Slice(48, None)}), high)));
  EXPECT_TRUE(torch::equal(fake_quantize_activation(x, low, high, 0), fake_quantize(x, low)));
  EXPECT_TRUE(torch::equal(fake_quantize_activation(x, low, high, 64), fake_quantize(x, high)));
  // Unquantized specs are the identity.
  EXPECT_TRUE(torch::equal(fake_quantize_activation(x, QuantSpec{}, QuantSpec{}, 16), x));
}

// KV cache: asymmetric per token per head is the activation quantizer with group = head_dim.
TEST(Quantizer, KvCachePerTokenPerHead) {
  torch::manual_seed(5);
  const int64_t B = 2, H = 3, T = 7, D = 16;
  const Tensor kv = torch::randn({B, H, T, D}) + torch::linspace(-2, 2, D);
  const QuantSpec s = spec(4, false, D);
  const Tensor q = fake_quantize(kv, s);
  EXPECT_EQ(q.sizes(), kv.sizes());
  EXPECT_TRUE(torch::equal(q, fake_quantize(kv.reshape({-1, D}), spec(4, false)).reshape({B, H, T, D})));
  // A [B, T, H, D] view transposed to [B, H, T, D] quantizes the same rows.
  const Tensor bthd = kv.transpose(1, 2).contiguous();
  EXPECT_TRUE(torch::equal(fake_quantize(bthd.transpose(1, 2), s), q));
  // Per head within a token: a [B, T, H*D] tensor grouped by D is the same thing.
  EXPECT_TRUE(torch::equal(fake_quantize(bthd.reshape({B, T, H * D}), s).reshape({B, T, H, D}), q.transpose(1, 2)));
}

TEST(Quantizer, BinarizationBySignAndMeanAbs) {
  torch::manual_seed(6);
  const Tensor w = torch::randn({4, 32}) + 0.3;
  QuantSpec s = spec(1, true);
  const Tensor plain = w.sign() * w.abs().mean(1, true);
  EXPECT_TRUE(torch::allclose(fake_quantize(w, s), plain, 1e-6, 1e-6));
  s.binary_centered = true;
  const Tensor mu = w.mean(1, true);
  const Tensor centered = (w - mu).sign() * (w - mu).abs().mean(1, true) + mu;
  EXPECT_TRUE(torch::allclose(fake_quantize(w, s), centered, 1e-6, 1e-6));
  // Grouped: each group of 8 columns has its own mean and scale.
  s.group_size = 8;
  const Tensor g = w.reshape({4, 4, 8});
  const Tensor gmu = g.mean(-1, true);
  const Tensor by_group = ((g - gmu).sign() * (g - gmu).abs().mean(-1, true) + gmu).reshape({4, 32});
  EXPECT_TRUE(torch::allclose(fake_quantize(w, s), by_group, 1e-6, 1e-6));
  // Stored form: codes {0,1}, scale 2 alpha, zero 0.5 - mu/(2 alpha).
  s.group_size = 0;
  const QuantizedWeight qw = quantize_weight(w, s);
  EXPECT_TRUE(((qw.codes == 0) | (qw.codes == 1)).all().item<bool>());
  const Tensor alpha = (w - mu).abs().mean(1, true);
  EXPECT_TRUE(torch::allclose(qw.scales, 2 * alpha, 1e-6, 1e-7));
  EXPECT_TRUE(torch::allclose(qw.zeros, 0.5 - mu / (2 * alpha), 1e-5, 1e-6));
  EXPECT_EQ(qw.groups[0].bits, 1);
  // A group without spread (one column after pruning, a constant row) reconstructs its mean, and its
  // scale and zero survive the checkpoint's fp16 (they once became 0 and inf: NaN weights).
  s.binary_centered = true;
  s.group_size = 1;
  const QuantizedWeight one = quantize_weight(w.narrow(1, 0, 3), s);
  const Tensor s16 = one.scales.to(torch::kHalf).to(torch::kFloat), z16 = one.zeros.to(torch::kHalf).to(torch::kFloat);
  EXPECT_TRUE(torch::isfinite(s16).all().item<bool>() && torch::isfinite(z16).all().item<bool>());
  EXPECT_TRUE((s16 > 0).all().item<bool>());
  const Tensor deq = s16 * (one.codes.to(torch::kFloat) - z16);
  EXPECT_TRUE(torch::allclose(deq, w.narrow(1, 0, 3), 1e-3, 1e-3)) << (deq - w.narrow(1, 0, 3)).abs().max();
}

TEST(Quantizer, MixedWeightKeepsSalientColumnsAtInt8) {
  torch::manual_seed(7);
  const Tensor w = torch::randn({8, 64});
  const QuantSpec low = spec(3, true, 16, 0.85), high = spec(8, true);
  const Tensor q = fake_quantize_weight(w, low, high, 16);
  const Tensor err = (q - w).abs();
  const Tensor sal = w.index({Slice(), Slice(48, None)});
  const Tensor int8_half_step = sal.abs().amax(1, true) / 255;  // scale/2 of the 8-bit grid
  EXPECT_TRUE((err.index({Slice(), Slice(48, None)}) <= int8_half_step * (1 + 1e-5)).all().item<bool>());
  EXPECT_TRUE(torch::equal(q.index({Slice(), Slice(0, 48)}), fake_quantize(w.index({Slice(), Slice(0, 48)}), low)));
  EXPECT_GT(err.index({Slice(), Slice(0, 48)}).mean().item<double>(),
            10 * err.index({Slice(), Slice(48, None)}).mean().item<double>());
  const QuantizedWeight qw = quantize_weight_mixed(w, 16, low, high);
  ASSERT_EQ(qw.groups.size(), 4u);
  EXPECT_EQ(qw.groups[2].col_end, 48);
  EXPECT_EQ(qw.groups[3].col_begin, 48);
  EXPECT_EQ(qw.groups[3].bits, 8);
  EXPECT_EQ(qw.groups[0].bits, 3);
  EXPECT_EQ(qw.codes.scalar_type(), torch::kChar);
}

TEST(Quantizer, DequantizeEqualsFakeQuant) {
  torch::manual_seed(8);
  const Tensor w = torch::randn({5, 70}) * torch::linspace(0.5, 2, 70);
  std::vector<std::tuple<QuantSpec, QuantSpec, int64_t>> cases;
  QuantSpec mse = spec(3, false, 32);
  mse.mse_clip = true;
  QuantSpec bin = spec(1, true, 16);
  bin.binary_centered = true;
  cases.emplace_back(spec(4, true), spec(8, true), 0);
  cases.emplace_back(spec(4, false, 16), spec(8, true), 6);
  cases.emplace_back(mse, spec(8, false, 4), 10);
  cases.emplace_back(bin, spec(4, false), 14);
  cases.emplace_back(spec(8, false), spec(8, false), 70);
  cases.emplace_back(spec(2, true, 128, 0.9), spec(6, true, 5), 33);
  for (const auto& [low, high, k] : cases) {
    SCOPED_TRACE("k " + std::to_string(k));
    const QuantizedWeight qw = quantize_weight_mixed(w, k, low, high);
    EXPECT_TRUE(torch::equal(dequantize(qw), fake_quantize_weight(w, low, high, k)));
  }
  // 8-bit asymmetric codes fit int8 through the signed shift.
  const QuantizedWeight a8 = quantize_weight(w, spec(8, false));
  EXPECT_EQ(a8.codes.min().item<int>(), -128);
  EXPECT_EQ(a8.codes.max().item<int>(), 127);
}

TEST(Quantizer, StraightThroughGradientIsIdentity) {
  torch::manual_seed(9);
  const Tensor x = torch::randn({3, 4, 32}).requires_grad_();
  const Tensor g = torch::randn({3, 4, 32});
  const Tensor y = fake_quantize_activation(x, spec(4, true, 8), spec(8, true), 8);
  EXPECT_TRUE(torch::equal(y.detach(), fake_quantize_activation(x.detach(), spec(4, true, 8), spec(8, true), 8)));
  (y * g).sum().backward();
  EXPECT_TRUE(torch::equal(x.grad(), g));

  QuantSpec bin = spec(1, true);
  bin.mse_clip = true;
  const Tensor w = torch::randn({6, 16}).requires_grad_();
  (fake_quantize_weight(w, bin, spec(2, false), 4) * 3).sum().backward();
  EXPECT_TRUE(torch::equal(w.grad(), torch::full({6, 16}, 3.0)));

  const Tensor h = torch::randn({2, 8}, torch::kBFloat16).requires_grad_();
  const Tensor yh = fake_quantize(h, spec(4, false));
  EXPECT_EQ(yh.scalar_type(), torch::kBFloat16);
  yh.sum().backward();
  EXPECT_TRUE(torch::equal(h.grad(), torch::ones({2, 8}, torch::kBFloat16)));
}

TEST(Quantizer, MaskedFakeQuantGradientsAndHardMaskEquivalence) {
  torch::manual_seed(10);
  const Tensor x = (torch::randn({4, 64}) * torch::linspace(0.2, 4, 64)).requires_grad_();
  const QuantSpec low = spec(4, true, 16, 0.9), high = spec(8, true);
  const Tensor hard = torch::cat({torch::zeros(48), torch::ones(16)});
  EXPECT_TRUE(torch::equal(fake_quantize_masked(x, hard, low, high).detach(),
                           fake_quantize_activation(x.detach(), low, high, 16)));
  QuantSpec abin = spec(1, false, 16);
  abin.binary_centered = true;
  QuantSpec amse = spec(3, false);
  amse.mse_clip = true;
  EXPECT_TRUE(torch::allclose(fake_quantize_masked(x, hard, abin, amse).detach(),
                              fake_quantize_activation(x.detach(), abin, amse, 16), 1e-5, 1e-6));

  // Soft mask: d/dM = Q_h(x) - Q_l(x) summed over rows; d/dx stays the identity.
  const Tensor mask = torch::rand({64}).requires_grad_();
  const Tensor g = torch::randn({4, 64});
  const Tensor out = fake_quantize_masked(x, mask, low, high);
  (out * g).sum().backward();
  EXPECT_TRUE(torch::allclose(x.grad(), g, 1e-6, 1e-6));
  torch::NoGradGuard no_grad;
  const Tensor xd = x.detach(), md = mask.detach();
  // Reference with the same weighted statistics, built from the public pieces.
  auto q_weighted = [&](const QuantSpec& s, const Tensor& weight) {
    const Tensor xs = xd.reshape({4, -1, s.group_size > 0 ? s.group_size : 64});
    const Tensor ws = weight.expand_as(xd).reshape(xs.sizes());
    const GroupParams p = find_params(xs, s, ws);
    return (p.scale * (quantize_codes(xs, p, s) - p.zero)).reshape({4, 64});
  };
  const Tensor qh = q_weighted(high, md), ql = q_weighted(low, 1 - md);
  EXPECT_TRUE(torch::allclose(out.detach(), qh * md + ql * (1 - md), 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(mask.grad(), ((qh - ql) * g).sum(0), 1e-4, 1e-5));
}

// find_params sees the mask detached, so d/dM = (Q_h(x) - Q_l(x)) * upstream with each quantizer's
// range held where the current mask puts it. That is the exact derivative for every channel that
// does not set a range (the output is then linear in its mask entry); for a channel that sets one
// (the argmax of |x*M| or |x*(1-M)| in some row) the range's motion is left out by design.
TEST(Quantizer, MaskedFakeQuantMaskGradientHoldsTheRangesFixed) {
  torch::manual_seed(13);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const Tensor x = torch::randn({6, 32}, f64);
  const Tensor mask = (0.1 + 0.8 * torch::rand({32}, f64)).requires_grad_();
  const Tensor g = torch::randn({6, 32}, f64);
  const QuantSpec low = spec(3, true), high = spec(8, true);
  (fake_quantize_masked(x, mask, low, high) * g).sum().backward();
  const Tensor grad = mask.grad();

  torch::NoGradGuard no_grad;
  const Tensor m = mask.detach().clone();
  auto q_fixed = [&](const QuantSpec& s, const Tensor& weight) {
    const GroupParams p = find_params(x, s, weight);
    return p.scale * (quantize_codes(x, p, s) - p.zero);
  };
  EXPECT_TRUE(torch::allclose(grad, ((q_fixed(high, m) - q_fixed(low, 1 - m)) * g).sum(0), 1e-12, 1e-12));

  Tensor sets_range = torch::zeros({32}, torch::kBool);
  sets_range.index_fill_(0, (x * m).abs().argmax(1), true);
  sets_range.index_fill_(0, (x * (1 - m)).abs().argmax(1), true);
  auto f = [&](int64_t j, double d) {
    Tensor mm = m.clone();
    mm[j] += d;
    return (fake_quantize_masked(x, mm, low, high) * g).sum().item<double>();
  };
  const double h = 1e-5;
  int exact = 0, range_moved = 0;
  for (int64_t j = 0; j < 32; ++j) {
    const double fd = (f(j, h) - f(j, -h)) / (2 * h), gj = grad[j].item<double>();
    if (!sets_range[j].item<bool>()) {
      EXPECT_NEAR(fd, gj, 1e-8) << "channel " << j;
      ++exact;
    } else if (std::abs(fd - gj) > 1e-2 * std::abs(gj)) {
      ++range_moved;
    }
  }
  EXPECT_GE(exact, 20);
  EXPECT_GT(range_moved, 0);
}

TEST(Quantizer, MseClipReducesTheError) {
  torch::manual_seed(11);
  const Tensor w = torch::randn({16, 256}).pow(3);  // heavy tails: min-max wastes the grid
  for (bool sym : {true, false}) {
    QuantSpec minmax = spec(3, sym), mse = spec(3, sym);
    mse.mse_clip = true;
    const Tensor e_minmax = (fake_quantize(w, minmax) - w).abs().pow(2.4).sum(1);
    const Tensor e_mse = (fake_quantize(w, mse) - w).abs().pow(2.4).sum(1);
    EXPECT_TRUE((e_mse <= e_minmax).all().item<bool>());
    EXPECT_LT(e_mse.sum().item<double>(), 0.9 * e_minmax.sum().item<double>());
    EXPECT_LT((fake_quantize(w, mse) - w).square().sum().item<double>(),
              (fake_quantize(w, minmax) - w).square().sum().item<double>());
  }
}

TEST(Quantizer, EdgeCasesAndValidation) {
  // All-zero rows quantize to zero with finite parameters.
  const Tensor z = torch::zeros({2, 8});
  for (int bits : {1, 4})
    for (bool sym : {true, false}) {
      const QuantizedWeight qw = quantize_weight(z, spec(bits, sym));
      EXPECT_TRUE(torch::isfinite(qw.scales).all().item<bool>());
      // 1 bit cannot say 0: ±α with α at its floor, 2⁻²⁵ (fp16-storable).
      EXPECT_TRUE(torch::allclose(dequantize(qw), z, 0, bits == 1 ? 3e-8 : 1e-12));
    }
  // Float64 in, float64 out.
  const Tensor d = torch::randn({3, 9}, torch::kDouble);
  EXPECT_EQ(fake_quantize(d, spec(4, true)).scalar_type(), torch::kDouble);
  EXPECT_EQ(quantize_weight(d, spec(4, true)).scales.scalar_type(), torch::kDouble);
  EXPECT_THROW(fake_quantize(d, spec(9, true)), Error);
  EXPECT_THROW(fake_quantize(d, spec(4, true, -1)), Error);
  EXPECT_THROW(fake_quantize(d, spec(4, true, 0, 1.5)), Error);
  EXPECT_THROW(fake_quantize_weight(d, spec(4, true), spec(8, true), 10), Error);
  EXPECT_THROW(quantize_weight_mixed(d, 3, spec(4, true), QuantSpec{}), Error);
  EXPECT_NO_THROW(quantize_weight_mixed(d, 0, spec(4, true), QuantSpec{}));
}

TEST(Quantizer, RunsOnTheInputDevice) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(12);
  const Tensor x = torch::randn({4, 2, 96});
  const QuantSpec low = spec(4, true, 32, 0.9), high = spec(8, true);
  const Tensor cpu = fake_quantize_activation(x, low, high, 16);
  const Tensor gpu = fake_quantize_activation(x.cuda(), low, high, 16);
  EXPECT_TRUE(gpu.is_cuda());
  EXPECT_TRUE(torch::allclose(gpu.cpu(), cpu, 1e-6, 1e-6));
  const QuantizedWeight qw = quantize_weight_mixed(x[0].cuda(), 16, low, high);
  EXPECT_TRUE(torch::allclose(dequantize(qw).cpu(), fake_quantize_weight(x[0], low, high, 16), 1e-6, 1e-6));
}

}  // namespace
}  // namespace toga
