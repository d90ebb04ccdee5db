#include "quant/obr.h"

#include <cmath>

#include "quant/gptq.h"
#include "util/error.h"

namespace toga {

using torch::Tensor;

Tensor wanda_mask(const Tensor& w, const Tensor& s, double sparsity, bool two_four) {
  if (w.dim() != 2 || s.dim() != 1 || s.size(0) != w.size(1)) fail("Wanda needs W [out, in] and s [in]");
  torch::NoGradGuard no_grad;
  const Tensor score = w.abs().to(torch::kFloat64) * s.to(w.device(), torch::kFloat64).clamp_min(0).sqrt().unsqueeze(0);
  Tensor keep = torch::ones(w.sizes(), torch::TensorOptions().dtype(torch::kBool).device(w.device()));
  if (two_four) {
    if (w.size(1) % 4 != 0) fail("2:4 sparsity needs a multiple of 4 input columns, got {}", w.size(1));
    const Tensor groups = score.reshape({w.size(0), -1, 4});
    const Tensor lowest = std::get<1>(groups.topk(2, -1, /*largest=*/false));
    keep = keep.reshape({w.size(0), -1, 4}).scatter(2, lowest, false).reshape(w.sizes());
  } else {
    if (!(sparsity >= 0 && sparsity < 1)) fail("sparsity {} is outside [0, 1)", sparsity);
    const int64_t prune = int64_t(std::floor(sparsity * double(w.size(1))));
    if (prune > 0) keep.scatter_(1, std::get<1>(score.topk(prune, 1, /*largest=*/false)), false);
  }
  return keep;
}

Tensor obr_compensate(const Tensor& w_in, const Tensor& h_in, const Tensor& mask, const QuantSpec& spec, double alpha) {
  if (w_in.dim() != 2 || !mask.sizes().equals(w_in.sizes()) || h_in.size(0) != w_in.size(1))
    fail("OBR needs W [out, in], H [in, in] and a mask of W's shape");
  if (!(alpha >= 0 && alpha <= 1)) fail("OBR's split alpha must be in [0, 1], got {}", alpha);
  torch::NoGradGuard no_grad;
  const Tensor W = w_in.to(torch::kFloat64), H = h_in.to(torch::kFloat64);
  if (spec.group_size != 0 || !spec.quantized()) fail("OBR's quantizer is per channel (one group per row), got groups of {}", spec.group_size);
  // The quantizer's grid per row, fitted on the dense W.
  const GroupParams dense = find_params(W, spec);
  const int64_t in = W.size(1), split = std::llround(alpha * double(in));
  Tensor out = W * mask.to(torch::kFloat64);
  for (int64_t c = 0; c < W.size(0); ++c) {
    const Tensor kept = mask[c].nonzero().flatten(), pruned = mask[c].logical_not().nonzero().flatten();
    Tensor w = out[c].clone();
    if (pruned.numel() > 0 && kept.numel() > 0) {
      const Tensor hii = H.index_select(0, kept).index_select(1, kept);
      const Tensor hiz = H.index_select(0, kept).index_select(1, pruned);
      const Tensor delta = torch::linalg_solve(hii, hiz.matmul(W[c].index_select(0, pruned)));
      w.index_add_(0, kept, delta);
    }
    const Tensor e_cols = kept.masked_select(kept < split), r_cols = kept.masked_select(kept >= split);
    if (e_cols.numel() > 0 && r_cols.numel() > 0) {
      // The row's quantization of w′ on its dense-fitted grid, on the columns before the split.
      const GroupParams row{dense.scale.narrow(0, c, 1), dense.zero.narrow(0, c, 1)};
      const Tensor wq = (row.scale * (quantize_codes(w.unsqueeze(0), row, spec) - row.zero)).squeeze(0);
      const Tensor e = (w - wq).index_select(0, e_cols);
      const Tensor hrr = H.index_select(0, r_cols).index_select(1, r_cols);
      const Tensor hre = H.index_select(0, r_cols).index_select(1, e_cols);
      w.index_add_(0, r_cols, torch::linalg_solve(hrr, hre.matmul(e)));
    }
    out[c] = w;
  }
  return out.to(w_in.scalar_type());
}

ObrResult obr_quantize(const Tensor& w_in, const Tensor& h_in, const QuantSpec& spec, const ObrOptions& o) {
  if (w_in.dim() != 2 || h_in.dim() != 2 || h_in.size(0) != w_in.size(1) || h_in.size(1) != w_in.size(1))
    fail("OBR needs W [out, in] and H [in, in]");
  torch::NoGradGuard no_grad;
  const int64_t in = w_in.size(1), split = std::llround(o.alpha * double(in));
  Tensor W = w_in.detach().to(torch::kFloat64).clone();
  Tensor H = h_in.detach().to(W.device(), torch::kFloat64).clone();
  const Tensor wanda_stat = H.diagonal() / 2;  // mean x_j²
  const Tensor dead = H.diagonal() == 0;  // as GPTQ: an input that never fired carries nothing
  H.diagonal().masked_fill_(dead, 1.0);
  W.masked_fill_(dead.unsqueeze(0), 0.0);
  H.diagonal().add_(o.damp * H.diagonal().mean());

  ObrResult r;
  r.keep = wanda_mask(W, wanda_stat, o.sparsity, o.two_four);
  const Tensor compensated = obr_compensate(W, H, r.keep, spec, o.alpha) * r.keep.to(torch::kFloat64);
  const GroupParams dense = find_params(W, spec);  // the grid obr_compensate quantized with
  Tensor codes = quantize_codes(compensated, dense, spec);
  if (o.gptq && split < in) {
    GptqOptions g;
    g.low = g.high = spec;
    g.block_size = o.block_size;
    g.damp = 0;  // H is damped already
    g.keep = r.keep.narrow(1, split, in - split);
    g.fit = [&dense](const Tensor&, const QuantSpec&) { return dense; };
    const Tensor rest = H.narrow(0, split, in - split).narrow(1, split, in - split);
    codes.narrow(1, split, in - split).copy_(gptq_quantize(compensated.narrow(1, split, in - split), rest, g).weight.codes);
  }
  r.weight.codes = codes.to(torch::kChar);
  r.weight.scales = dense.scale.to(torch::kFloat32);
  r.weight.zeros = dense.zero.to(torch::kFloat32);
  r.weight.groups = column_groups(in, 0, spec, spec);
  const Tensor diff = W - dequantize(r.weight).to(torch::kFloat64);
  r.loss = 0.5 * torch::trace(diff.matmul(H).matmul(diff.t())).item<double>();
  return r;
}

}  // namespace toga
