#include "quant/quantizer.h"

#include <algorithm>
#include <limits>

#include "util/error.h"

namespace toga {

namespace {

using torch::Tensor;

// Half precision inputs are quantized in float32; float64 stays float64 (reference computations).
torch::ScalarType compute_dtype(const Tensor& x) {
  return x.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
}

// GPTQ's w_clip grid.
constexpr int kMseGrid = 100;
constexpr int kMseSteps = 80;  // maxshrink 0.8
constexpr double kMseNorm = 2.4;

// -max|x| lands exactly on a rounding tie of the symmetric GPTQ grid (-(2^b-1)/2), which float
// noise in the scale then breaks either way, differently across dtypes and devices. Widening the
// scale by 2^-16 (100x the float32 noise) rounds it to -(2^(b-1)-1) everywhere, the error staying
// below scale/2, and makes unclipped symmetric quantization odd: q(-x) = -q(x).
constexpr double kSymmetricTieBreak = 1.0 + 1.0 / 65536;

// A group with mean |x - mu| = 0 still needs a finite scale and zero, both fp16-representable (a
// checkpoint stores them in fp16; 2·α ≥ 2⁻²⁴, the smallest fp16); this keeps mu reconstructed.
constexpr double kMinBinaryAlpha = 1.0 / 33554432;  // 2⁻²⁵

GroupParams binary_params(const Tensor& x, const QuantSpec& spec, const Tensor& w) {
  Tensor mu, alpha;
  if (w.defined()) {
    const Tensor ws = w.expand_as(x);
    const Tensor den = ws.sum(-1, true).clamp_min(std::numeric_limits<float>::min());
    mu = spec.binary_centered ? (x * ws).sum(-1, true) / den : torch::zeros_like(den);
    alpha = ((x - mu).abs() * ws).sum(-1, true) / den;
  } else {
    mu = spec.binary_centered ? x.mean(-1, true) : torch::zeros_like(x.select(-1, 0).unsqueeze(-1));
    alpha = (x - mu).abs().mean(-1, true);
  }
  // A group without spread (one column, or constant) reconstructs mu; α is kept large enough that
  // the zero point 0.5 − mu/(2α) stays finite in the checkpoint's fp16 (|zero| ≤ 30000), which costs
  // at most |mu|/60000 of error there.
  alpha = torch::maximum(alpha, mu.abs() / 60000).clamp_min(kMinBinaryAlpha);
  return {2 * alpha, 0.5 - mu / (2 * alpha)};
}

struct Grouped {
  Tensor codes, values;  // shaped like x
  Tensor scale, zero;    // [..., n_groups]
};

// x (compute dtype, last dim > 0) split along its last dim into groups of spec.group_size, the last
// one ragged; full groups are handled in one batched call, the tail in a second.
Grouped quantize_groups(const Tensor& x, const QuantSpec& spec, const Tensor& weight) {
  const int64_t len = x.size(-1);
  const int64_t g = spec.group_size > 0 && spec.group_size < len ? spec.group_size : len;
  const int64_t n_full = len / g;
  const Tensor w = weight.defined() ? weight.to(x.scalar_type()).expand_as(x) : Tensor();
  std::vector<Tensor> codes, values, scales, zeros;
  auto run = [&](int64_t begin, int64_t n, int64_t width) {
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = n;
    shape.push_back(width);
    const Tensor xs = x.narrow(-1, begin, n * width).reshape(shape);
    const Tensor ws = w.defined() ? w.narrow(-1, begin, n * width).reshape(shape) : Tensor();
    const GroupParams p = find_params(xs, spec, ws);
    const Tensor c = quantize_codes(xs, p, spec);
    codes.push_back(c.flatten(-2, -1));
    values.push_back((p.scale * (c - p.zero)).flatten(-2, -1));
    scales.push_back(p.scale.squeeze(-1));
    zeros.push_back(p.zero.squeeze(-1));
  };
  if (n_full > 0) run(0, n_full, g);
  if (n_full * g < len) run(n_full * g, 1, len - n_full * g);
  return {torch::cat(codes, -1), torch::cat(values, -1), torch::cat(scales, -1), torch::cat(zeros, -1)};
}

// Forward value q, gradient of x: x - x.detach() is exactly zero, so the value stays on the grid
// (x + (q - x).detach() would not, in floating point) and nothing but the identity flows back.
Tensor straight_through(const Tensor& x, const Tensor& q) {
  const Tensor out = x.requires_grad() ? q + (x - x.detach()) : q;
  return out.to(x.scalar_type());
}

Tensor fake_quantize_mixed(const Tensor& x, const QuantSpec& low, const QuantSpec& high, int64_t k) {
  validate(low);
  validate(high);
  if (x.dim() < 1) fail("fake quantization needs at least one dimension");
  const int64_t in = x.size(-1);
  if (k < 0 || k > in) fail("salient channel count {} outside [0, {}]", k, in);
  if (k == 0) return fake_quantize(x, low);
  if (k == in) return fake_quantize(x, high);
  return torch::cat({fake_quantize(x.narrow(-1, 0, in - k), low), fake_quantize(x.narrow(-1, in - k, k), high)},
                    -1);
}

}  // namespace

void validate(const QuantSpec& spec) {
  if (spec.bits < 1 || (spec.bits > 8 && spec.bits < 16))
    fail("unsupported bit width {} (1..8, or >= 16 for unquantized)", spec.bits);
  if (spec.group_size < 0) fail("negative group size {}", spec.group_size);
  if (!(spec.clip_ratio > 0 && spec.clip_ratio <= 1)) fail("clip ratio {} outside (0, 1]", spec.clip_ratio);
}

int code_min(const QuantSpec& spec) { return spec.bits == 1 ? 0 : -(1 << (spec.bits - 1)); }
int code_max(const QuantSpec& spec) { return spec.bits == 1 ? 1 : (1 << (spec.bits - 1)) - 1; }

GroupParams find_params(const Tensor& x_in, const QuantSpec& spec, const Tensor& weight) {
  validate(spec);
  if (!spec.quantized()) fail("find_params on an unquantized spec ({} bits)", spec.bits);
  torch::NoGradGuard no_grad;
  const Tensor x = x_in.detach().to(compute_dtype(x_in));
  const Tensor w = weight.defined() ? weight.detach().to(x.scalar_type()) : Tensor();
  if (spec.bits == 1) return binary_params(x, spec, w);

  const double qmax = static_cast<double>((1 << spec.bits) - 1);
  const double half = static_cast<double>(1 << (spec.bits - 1));
  const Tensor xs = w.defined() ? x * w : x;
  Tensor lo, hi;
  if (spec.symmetric) {
    hi = xs.abs().amax(-1, true);
    hi = torch::where(hi > 0, hi, torch::ones_like(hi));
    lo = -hi;
  } else {
    lo = xs.amin(-1, true).clamp_max(0);
    hi = xs.amax(-1, true).clamp_min(0);
    const Tensor empty = (lo == 0) & (hi == 0);
    lo = torch::where(empty, -torch::ones_like(lo), lo);
    hi = torch::where(empty, torch::ones_like(hi), hi);
  }
  auto params_at = [&](double p) -> GroupParams {
    const Tensor scale = (hi - lo) * (spec.symmetric ? p * kSymmetricTieBreak : p) / qmax;
    const Tensor zero = spec.symmetric ? torch::zeros_like(scale) : torch::round(-(lo * p) / scale) - half;
    return {scale, zero};
  };
  GroupParams best = params_at(spec.clip_ratio);
  if (!spec.mse_clip) return best;

  Tensor best_err = torch::full_like(hi, std::numeric_limits<double>::infinity());
  for (int i = 0; i < kMseSteps; ++i) {
    const GroupParams cand = params_at(spec.clip_ratio * (1.0 - static_cast<double>(i) / kMseGrid));
    Tensor err = (cand.scale * (quantize_codes(x, cand, spec) - cand.zero) - x).abs().pow(kMseNorm);
    if (w.defined()) err = err * w;
    err = err.sum(-1, true);
    const Tensor better = err < best_err;
    best_err = torch::where(better, err, best_err);
    best.scale = torch::where(better, cand.scale, best.scale);
    best.zero = torch::where(better, cand.zero, best.zero);
  }
  return best;
}

Tensor quantize_codes(const Tensor& x, const GroupParams& p, const QuantSpec& spec) {
  // (x - mu)/(2 alpha) >= 0, written so that the uncentered threshold (zero = 0.5) is exactly sign(x).
  if (spec.bits == 1) return ((x / p.scale + (p.zero - 0.5)) >= 0).to(x.scalar_type());
  return (torch::round(x / p.scale) + p.zero).clamp(code_min(spec), code_max(spec));
}

std::vector<ColumnGroup> column_groups(int64_t in, int64_t k_salient, const QuantSpec& low,
                                       const QuantSpec& high) {
  if (k_salient < 0 || k_salient > in) fail("salient channel count {} outside [0, {}]", k_salient, in);
  std::vector<ColumnGroup> out;
  auto add = [&](int64_t begin, int64_t end, const QuantSpec& s) {
    const int64_t step = s.group_size > 0 ? s.group_size : end - begin;
    const bool symmetric = s.bits == 1 ? !s.binary_centered : s.symmetric;
    for (int64_t c = begin; c < end; c += step) out.push_back({c, std::min(c + step, end), s.bits, symmetric});
  };
  add(0, in - k_salient, low);
  add(in - k_salient, in, high);
  return out;
}

Tensor fake_quantize(const Tensor& x, const QuantSpec& spec) {
  validate(spec);
  if (!spec.quantized() || x.numel() == 0) return x;
  const Tensor q = quantize_groups(x.detach().to(compute_dtype(x)), spec, {}).values;
  return straight_through(x, q);
}

Tensor fake_quantize_weight(const Tensor& w, const QuantSpec& low, const QuantSpec& high, int64_t k_salient) {
  if (w.dim() != 2) fail("weight fake quantization needs [out, in], got {} dims", w.dim());
  return fake_quantize_mixed(w, low, high, k_salient);
}

Tensor fake_quantize_activation(const Tensor& x, const QuantSpec& low, const QuantSpec& high,
                                int64_t k_salient) {
  return fake_quantize_mixed(x, low, high, k_salient);
}

namespace {

// y = Q_h·m + Q_l·(1−m) as autograd would differentiate it with straight-through rounding — dy/dx
// the identity, dy/dm = Q_h − Q_l — but keeping only Q_h − Q_l, in x's dtype, for the backward
// instead of both quantized copies in the compute dtype: the search's largest saved tensors, one
// per block linear per step (bf16 weights: 2 bytes per weight instead of 8).
class MaskedMix : public torch::autograd::Function<MaskedMix> {
 public:
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& x, const Tensor& m, const Tensor& qh,
                        const Tensor& ql) {
    ctx->save_for_backward({(qh - ql).to(x.scalar_type())});
    ctx->saved_data["mask_sizes"] = m.sizes().vec();
    ctx->saved_data["mask_dtype"] = m.scalar_type();
    return (qh * m + ql * (1 - m)).to(x.scalar_type());
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    const Tensor diff = ctx->get_saved_variables()[0];
    const Tensor& g = grads[0];
    const auto sizes = ctx->saved_data["mask_sizes"].toIntVector();
    const auto dtype = ctx->saved_data["mask_dtype"].toScalarType();
    const auto acc = compute_dtype(g);
    const Tensor gm = (g.to(acc) * diff.to(acc)).sum_to_size(sizes).to(dtype);
    return {g, gm, Tensor(), Tensor()};
  }
};

}  // namespace

Tensor fake_quantize_masked(const Tensor& x, const Tensor& mask, const QuantSpec& low, const QuantSpec& high) {
  validate(low);
  validate(high);
  if (x.dim() < 1 || x.numel() == 0) fail("masked fake quantization needs a non-empty tensor");
  const Tensor xd = x.detach().to(compute_dtype(x));
  const Tensor m = mask.to(xd.scalar_type());
  auto part = [&](const QuantSpec& s, const Tensor& weight) -> Tensor {
    return s.quantized() ? quantize_groups(xd, s, weight).values : xd;
  };
  const Tensor qh = part(high, m.detach());
  const Tensor ql = part(low, 1 - m.detach());
  return MaskedMix::apply(x, m, qh, ql);
}

QuantizedWeight quantize_weight(const Tensor& w, const QuantSpec& spec) {
  return quantize_weight_mixed(w, 0, spec, spec);
}

QuantizedWeight quantize_weight_mixed(const Tensor& w, int64_t k_salient, const QuantSpec& low,
                                      const QuantSpec& high) {
  validate(low);
  validate(high);
  if (w.dim() != 2) fail("weight quantization needs [out, in], got {} dims", w.dim());
  const int64_t in = w.size(1);
  QuantizedWeight qw;
  qw.groups = column_groups(in, k_salient, low, high);
  torch::NoGradGuard no_grad;
  const Tensor x = w.detach().to(compute_dtype(w));
  std::vector<Tensor> codes, scales, zeros;
  for (const auto& [begin, width, spec] : {std::tuple{int64_t{0}, in - k_salient, &low},
                                           std::tuple{in - k_salient, k_salient, &high}}) {
    if (width == 0) continue;
    if (!spec->quantized()) fail("cannot store {} columns at {} bits as codes", width, spec->bits);
    const Grouped g = quantize_groups(x.narrow(1, begin, width), *spec, {});
    codes.push_back(g.codes);
    scales.push_back(g.scale);
    zeros.push_back(g.zero);
  }
  if (codes.empty()) fail("weight has no columns");
  qw.codes = torch::cat(codes, 1).to(torch::kChar);
  qw.scales = torch::cat(scales, 1);
  qw.zeros = torch::cat(zeros, 1);
  return qw;
}

Tensor dequantize(const QuantizedWeight& qw) {
  const int64_t in = qw.codes.size(1);
  std::vector<int64_t> column_group(static_cast<size_t>(in), -1);
  for (size_t g = 0; g < qw.groups.size(); ++g)
    for (int64_t c = qw.groups[g].col_begin; c < qw.groups[g].col_end; ++c) column_group[c] = static_cast<int64_t>(g);
  if (std::count(column_group.begin(), column_group.end(), -1) > 0) fail("column groups do not cover the weight");
  const Tensor index = torch::tensor(column_group, torch::kLong).to(qw.scales.device());
  const Tensor scale = qw.scales.index_select(1, index);
  Tensor w = scale * (qw.codes.to(scale.scalar_type()) - qw.zeros.index_select(1, index));
  int64_t offset = 0;
  for (const auto& g : qw.groups) {
    if (!g.codebook) continue;
    const int64_t n = int64_t(1) << g.bits, width = g.col_end - g.col_begin;
    if (!qw.levels.defined() || qw.levels.size(1) < offset + n) fail("codebook groups without their levels");
    const Tensor codes = qw.codes.narrow(1, g.col_begin, width).to(torch::kLong);
    w.narrow(1, g.col_begin, width).copy_(qw.levels.narrow(1, offset, n).to(w.scalar_type()).gather(1, codes));
    offset += n;
  }
  if (qw.column_scales.defined()) w = w * qw.column_scales.to(w.scalar_type()).unsqueeze(0);
  return w;
}

bool QuantizedWeight::has_codebook() const {
  return std::any_of(groups.begin(), groups.end(), [](const ColumnGroup& g) { return g.codebook; });
}

}  // namespace toga
