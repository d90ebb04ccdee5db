#include "quant/billm.h"

#include <limits>

#include "quant/gptq.h"
#include "util/error.h"

namespace toga {

using torch::Tensor;

Tensor binarize_rows(const Tensor& x, const Tensor& mask, int order) {
  if (order < 1 || order > 2) fail("binarization order must be 1 or 2, got {}", order);
  const Tensor m = mask.to(x.scalar_type()).expand_as(x);
  const Tensor count = m.sum(1, true).clamp_min(1);
  Tensor out = torch::zeros_like(x), residual = x * m;
  for (int o = 0; o < order; ++o) {
    const Tensor mu = residual.sum(1, true) / count;
    const Tensor dev = (residual - mu) * m;
    const Tensor alpha = dev.abs().sum(1, true) / count;
    const Tensor b = (mu + alpha * torch::where(dev >= 0, torch::ones_like(dev), -torch::ones_like(dev))) * m;
    out = out + b;
    residual = residual - b;
  }
  return out;
}

namespace {

double mse(const Tensor& a, const Tensor& b) { return (a - b).pow(2).sum().item<double>(); }

}  // namespace

BillmResult billm_quantize(const Tensor& w_in, const Tensor& h_in, const BillmOptions& o) {
  if (w_in.dim() != 2 || h_in.dim() != 2 || h_in.size(0) != w_in.size(1) || h_in.size(1) != w_in.size(1))
    fail("BiLLM needs W [out, in] and H [in, in]");
  if (o.block_size < 1 || o.salient_candidates < 1) fail("BiLLM needs a positive block size and candidate count");
  torch::NoGradGuard no_grad;
  const auto dtype = w_in.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  const int64_t rows = w_in.size(0), cols = w_in.size(1);
  Tensor W = w_in.detach().to(dtype).clone();
  Tensor H = h_in.detach().to(W.device(), torch::kDouble).clone();
  const Tensor dead = H.diagonal() == 0;  // as GPTQ: an input that never fired carries nothing
  H.diagonal().masked_fill_(dead, 1.0);
  W.masked_fill_(dead.unsqueeze(0), 0.0);
  H.diagonal().add_(o.damp * H.diagonal().mean());
  const Tensor W0 = W.clone();
  const Tensor U = inverse_hessian_factor(H, o.damp).to(dtype);
  const Tensor d = U.diagonal();

  BillmResult r;
  Tensor Q = torch::zeros_like(W);
  r.salient = torch::zeros({cols}, torch::kBool);
  r.sparse = torch::zeros({rows, cols}, torch::kBool);
  int64_t salient_total = 0;
  double stored_values = 0;
  for (int64_t c0 = 0; c0 < cols; c0 += o.block_size) {
    const int64_t B = std::min(o.block_size, cols - c0);
    const Tensor Wb = W.narrow(1, c0, B);
    const Tensor S = Wb.pow(2) / d.narrow(0, c0, B).pow(2).unsqueeze(0);
    // Salient columns: among the top candidates by Σ_i S_ij, the count whose order-2 approximation
    // of S (salient and rest separately) has the lowest error.
    const int64_t candidates = std::min<int64_t>(o.salient_candidates, B);
    const Tensor top = std::get<1>(S.abs().sum(0).topk(candidates));
    Tensor salient = torch::zeros({B}, torch::kBool);
    double best = std::numeric_limits<double>::infinity();
    for (int64_t k = 1; k < candidates; ++k) {
      Tensor mask = torch::zeros({B}, torch::kBool);
      mask.index_fill_(0, top.narrow(0, 0, k), true);
      const Tensor m2 = mask.unsqueeze(0).expand({rows, B});
      const double e = mse(binarize_rows(S, m2, 2) + binarize_rows(S, m2.logical_not(), 2), S);
      if (e < best) best = e, salient = mask;
    }
    const Tensor sal = salient.unsqueeze(0).expand({rows, B});
    // Break point: the quantile of |S| (salient entries counted as 0) that best splits the rest
    // into a concentrated and a sparse group, judged on S.
    const Tensor s_abs = S.abs().masked_fill(sal, 0.0);
    const Tensor salient_part = binarize_rows(S, sal, 2);
    Tensor sparse = torch::zeros({rows, B}, torch::kBool);
    best = std::numeric_limits<double>::infinity();
    const Tensor sorted = std::get<0>(s_abs.flatten().to(torch::kDouble).sort());
    for (int i = 10; i <= 90; ++i) {
      const double p = sorted[int64_t(double(i) / 100.0 * double(sorted.numel() - 1))].item<double>();
      const Tensor high = (s_abs >= p).logical_and(sal.logical_not()), low = (s_abs < p).logical_and(sal.logical_not());
      const double e = mse(salient_part + binarize_rows(S, high, 1) + binarize_rows(S, low, 1), S);
      if (e < best) best = e, sparse = high;
    }
    const Tensor concentrated = sal.logical_not().logical_and(sparse.logical_not());
    const Tensor Qb = binarize_rows(Wb, sal, 2) + binarize_rows(Wb, sparse, 1) + binarize_rows(Wb, concentrated, 1);
    Q.narrow(1, c0, B).copy_(Qb);
    r.salient.narrow(0, c0, B).copy_(salient.cpu());
    r.sparse.narrow(1, c0, B).copy_(sparse.cpu());
    salient_total += salient.sum().item<int64_t>();
    stored_values += 8.0 * double(rows);
    // Error compensation between blocks: W_later −= Err·U[block, later], Err = (W − Q) / d.
    if (c0 + B < cols) {
      const Tensor err = (Wb - Qb) / d.narrow(0, c0, B).unsqueeze(0);
      W.narrow(1, c0 + B, cols - c0 - B) -= err.matmul(U.narrow(0, c0, B).narrow(1, c0 + B, cols - c0 - B));
    }
  }
  const Tensor diff = (W0 - Q).to(torch::kDouble);
  r.loss = 0.5 * torch::trace(diff.matmul(H).matmul(diff.t())).item<double>();
  r.weight = Q.to(w_in.scalar_type());
  const double weights = double(rows) * double(cols), sf = double(salient_total) / double(cols);
  r.bits_paper = 1.0 + sf;
  r.bits_with_flags = r.bits_paper + (1.0 - sf);
  r.bits_total = r.bits_with_flags + 16.0 * stored_values / weights;
  return r;
}

}  // namespace toga
