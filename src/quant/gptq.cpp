#include "quant/gptq.h"

#include <algorithm>
#include <cmath>

#include "util/error.h"

namespace toga {

using torch::Tensor;

Tensor inverse_hessian_factor(const Tensor& h_damped, double damp) {
  try {
    return torch::linalg_cholesky(torch::cholesky_inverse(torch::linalg_cholesky(h_damped.to(torch::kDouble))),
                                  /*upper=*/true);
  } catch (const c10::Error& e) {
    fail("GPTQ: damped Hessian is not positive definite (raise damp above {}): {}", damp, e.what_without_backtrace());
  }
}

GptqResult gptq_quantize(const Tensor& w_in, const Tensor& h_in, const GptqOptions& o) {
  validate(o.low);
  validate(o.high);
  if (w_in.dim() != 2) fail("GPTQ needs a weight [out, in], got {} dims", w_in.dim());
  const int64_t rows = w_in.size(0), cols = w_in.size(1), n_low = cols - o.k_salient;
  if (h_in.dim() != 2 || h_in.size(0) != cols || h_in.size(1) != cols)
    fail("GPTQ Hessian must be [{0}, {0}] for a weight with {0} columns", cols);
  if (o.block_size < 1) fail("GPTQ block size {} < 1", o.block_size);
  std::vector<ColumnGroup> groups = column_groups(cols, o.k_salient, o.low, o.high);
  std::vector<QuantSpec> group_spec;
  for (const auto& g : groups) group_spec.push_back(g.col_begin < n_low ? o.low : o.high);
  if (!o.group_bits.empty()) {
    if (o.k_salient != 0) fail("GPTQ: per-group bit widths need k_salient = 0");
    groups = column_groups(cols, 0, o.low, o.low);
    if (groups.size() != o.group_bits.size())
      fail("GPTQ: {} per-group bit widths for {} column groups", o.group_bits.size(), groups.size());
    for (size_t g = 0; g < groups.size(); ++g) {
      group_spec[g].bits = groups[g].bits = o.group_bits[g];
      validate(group_spec[g]);
      groups[g].symmetric = o.group_bits[g] == 1 ? !o.low.binary_centered : o.low.symmetric;
    }
  }
  for (const auto& g : groups)
    if (g.bits >= 16) fail("GPTQ cannot leave columns unquantized ({} bits)", g.bits);
  if (!(o.sparsity >= 0 && o.sparsity < 1)) fail("SparseGPT sparsity {} is outside [0, 1)", o.sparsity);
  const bool prunes = o.sparsity > 0 || o.prune_n > 0 || o.keep.defined();
  if (int(o.sparsity > 0) + int(o.prune_n > 0) + int(o.keep.defined()) > 1)
    fail("GPTQ prunes by one rule: a sparsity, an n:m pattern or a fixed mask");
  if (o.prune_n > 0 && !(o.prune_m > o.prune_n)) fail("n:m sparsity needs 0 < n < m, got {}:{}", o.prune_n, o.prune_m);
  if (o.keep.defined() && !o.keep.sizes().equals(w_in.sizes())) fail("GPTQ's keep mask must have W's shape");
  for (const auto& g : groups)
    if (prunes && g.bits == 1) fail("SparseGPT needs a quantizer that represents zero: 1-bit columns cannot be pruned");

  torch::NoGradGuard no_grad;
  const auto dtype = w_in.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  Tensor W = w_in.detach().to(dtype).clone();
  Tensor H = h_in.detach().to(W.device(), torch::kDouble).clone();

  // An input that never fired carries no information: pin its curvature and drop its weights.
  const Tensor dead = H.diagonal() == 0;
  H.diagonal().masked_fill_(dead, 1.0);
  W.masked_fill_(dead.unsqueeze(0), 0.0);

  Tensor perm = torch::arange(cols, W.options().dtype(torch::kLong));
  if (o.act_order && n_low > 1) {
    // Stable, so ties (dead inputs all have diag 1) keep their order on every device.
    perm.narrow(0, 0, n_low)
        .copy_(torch::argsort(H.diagonal().narrow(0, 0, n_low), /*stable=*/true, 0, /*descending=*/true));
    W = W.index_select(1, perm);
    H = H.index_select(0, perm).index_select(1, perm);
  }
  // Rows are columns here, as Wt below.
  const Tensor pruned_t = o.keep.defined() ? o.keep.to(W.device()).index_select(1, perm).logical_not().t().contiguous() : Tensor();
  H.diagonal().add_(o.damp * H.diagonal().mean());

  // Row j of U (upper Cholesky of H^-1) is row j of the inverse Hessian restricted to the columns
  // not yet quantized, scaled by 1/sqrt of its diagonal: OBS downdating without ever downdating.
  const Tensor U = inverse_hessian_factor(H, o.damp).to(dtype);

  // Rows of Wt are W's columns, so every per-column step below touches contiguous memory.
  Tensor Wt = W.t().contiguous();
  Tensor codes_t = torch::zeros_like(Wt);
  Tensor scales = torch::zeros({rows, static_cast<int64_t>(groups.size())}, W.options());
  Tensor zeros = torch::zeros_like(scales);
  Tensor loss = torch::zeros({}, W.options().dtype(torch::kDouble));
  size_t next_group = 0;
  GroupParams params;  // of the current group, one entry per row
  const QuantSpec* spec = nullptr;

  for (int64_t i1 = 0; i1 < cols; i1 += o.block_size) {
    const int64_t i2 = std::min(i1 + o.block_size, cols), count = i2 - i1;
    Tensor W1 = Wt.narrow(0, i1, count).clone();
    Tensor Err1 = torch::zeros_like(W1);
    const Tensor U1 = U.narrow(0, i1, count).narrow(1, i1, count);
    // SparseGPT: the block's weights of lowest saliency w² / U_jj² (U_jj² = [H⁻¹]_jj as column j is
    // reached), exactly round(sparsity · numel) of them, pruned (ties: the stable sort's order).
    Tensor pruned1;
    if (pruned_t.defined()) pruned1 = pruned_t.narrow(0, i1, count);
    if (o.prune_n > 0) pruned1 = torch::zeros({count, rows}, W1.options().dtype(torch::kBool));
    if (o.sparsity > 0) {
      const Tensor score = W1.square() / U1.diagonal().square().unsqueeze(1);  // [count, rows]
      const int64_t k = std::llround(o.sparsity * double(score.numel()));
      pruned1 = torch::zeros({score.numel()}, W1.options().dtype(torch::kBool));
      pruned1.index_fill_(0, torch::argsort(score.flatten(), /*stable=*/true).narrow(0, 0, k), true);
      pruned1 = pruned1.view_as(score);
    }

    // Columns [c, end) as [rows, end - c], with the errors of all columns before c applied; those
    // past this block have only received earlier blocks' errors so far, so this block's are added.
    auto current = [&](int64_t c, int64_t end) {
      const Tensor inside = W1.narrow(0, c - i1, std::min(end, i2) - c);
      if (end <= i2) return inside.t();
      const Tensor past = Wt.narrow(0, i2, end - i2) -
                          U.narrow(0, i1, c - i1).narrow(1, i2, end - i2).t().mm(Err1.narrow(0, 0, c - i1));
      return torch::cat({inside, past}, 0).t();
    };

    for (int64_t i = 0; i < count; ++i) {
      const int64_t c = i1 + i;
      if (o.prune_n > 0 && (c % o.prune_m) == 0) {
        // The n of lowest w² / U_jj² in each row among columns [c, c + m) (SparseGPT's n:m).
        const int64_t m = std::min<int64_t>(o.prune_m, i2 - c);
        const Tensor score = W1.narrow(0, i, m).square() / U1.diagonal().narrow(0, i, m).square().unsqueeze(1);
        if (m > o.prune_n)
          pruned1.narrow(0, i, m).scatter_(0, std::get<1>(score.topk(o.prune_n, 0, /*largest=*/false)), true);
      }
      if (next_group < groups.size() && groups[next_group].col_begin == c) {
        spec = &group_spec[next_group];
        const Tensor columns = current(c, groups[next_group].col_end);
        params = o.fit ? o.fit(columns, *spec) : find_params(columns, *spec);
        params = {params.scale.squeeze(1), params.zero.squeeze(1)};
        scales.select(1, static_cast<int64_t>(next_group)).copy_(params.scale);
        zeros.select(1, static_cast<int64_t>(next_group)).copy_(params.zero);
        ++next_group;
      }
      const Tensor w = W1[i];
      const Tensor code = quantize_codes(pruned1.defined() ? w.masked_fill(pruned1[i], 0.0) : w, params, *spec);
      const Tensor u = U1[i].narrow(0, i, count - i);  // u[0] = d = U_cc
      Tensor err = Err1[i];
      torch::sub_out(err, w, params.scale * (code - params.zero)).div_(u[0]);
      W1.narrow(0, i, count - i).addr_(u, err, 1, -1);
      codes_t[c].copy_(code);
    }
    loss += Err1.square().sum().to(torch::kDouble) / 2;
    if (i2 < cols) Wt.narrow(0, i2, cols - i2).addmm_(U.narrow(0, i1, count).narrow(1, i2, cols - i2).t(), Err1, 1, -1);
  }

  GptqResult result;
  result.weight.codes = codes_t.t().to(torch::kChar).contiguous();
  result.weight.scales = scales;
  result.weight.zeros = zeros;
  result.weight.groups = groups;
  result.perm = perm;
  result.loss = loss.item<double>();
  return result;
}

}  // namespace toga
