#include "quant/billm.h"

#include <limits>

#include "quant/gptq.h"
#include "util/error.h"

namespace toga {

using torch::Tensor;

namespace {

// binarize_rows with its parts: per order, μ and α [rows, 1] and where the sign was + [rows, cols].
struct Binarized {
  Tensor values;
  std::vector<Tensor> mu, alpha, positive;
};

Binarized binarize_rows_parts(const Tensor& x, const Tensor& mask, int order) {
  if (order < 1 || order > 2) fail("binarization order must be 1 or 2, got {}", order);
  const Tensor m = mask.to(x.scalar_type()).expand_as(x);
  const Tensor count = m.sum(1, true).clamp_min(1);
  Binarized r;
  r.values = torch::zeros_like(x);
  Tensor residual = x * m;
  for (int o = 0; o < order; ++o) {
    const Tensor mu = residual.sum(1, true) / count;
    const Tensor dev = (residual - mu) * m;
    const Tensor alpha = dev.abs().sum(1, true) / count;
    const Tensor positive = dev >= 0;
    const Tensor b = (mu + alpha * torch::where(positive, torch::ones_like(dev), -torch::ones_like(dev))) * m;
    r.values = r.values + b;
    residual = residual - b;
    r.mu.push_back(mu);
    r.alpha.push_back(alpha);
    r.positive.push_back(positive);
  }
  return r;
}

}  // namespace

Tensor binarize_rows(const Tensor& x, const Tensor& mask, int order) { return binarize_rows_parts(x, mask, order).values; }

namespace {

// One block's binarization as codebook groups (quant/quantizer.h): the non-salient columns, code =
// 2·sparse + sign, levels (μc − αc, μc + αc, μs − αs, μs + αs); then the salient columns, code =
// 2·sign₁ + sign₂, levels μ₁ + μ₂ ± α₁ ± α₂ — the same sums binarize_rows forms, so dequantizing
// gives its values exactly.
struct BlockCodes {
  std::vector<Tensor> codes, levels;
  std::vector<ColumnGroup> groups;
};

void add_block_codes(BlockCodes& out, int64_t& next_col, const Tensor& columns_rest, const Tensor& columns_salient,
                     const Binarized& conc, const Binarized& sparse_part, const Tensor& sparse, const Binarized& sal) {
  auto pick = [](const Tensor& t, const Tensor& cols) { return t.index_select(1, cols); };
  auto level = [](const Tensor& mu, const Tensor& alpha, bool plus) { return plus ? mu + alpha : mu - alpha; };
  if (columns_rest.numel() > 0) {
    const Tensor is_sparse = pick(sparse, columns_rest);
    const Tensor positive = torch::where(is_sparse, pick(sparse_part.positive[0], columns_rest), pick(conc.positive[0], columns_rest));
    out.codes.push_back(is_sparse.to(torch::kChar) * 2 + positive.to(torch::kChar));
    out.levels.push_back(torch::cat({level(conc.mu[0], conc.alpha[0], false), level(conc.mu[0], conc.alpha[0], true),
                                     level(sparse_part.mu[0], sparse_part.alpha[0], false),
                                     level(sparse_part.mu[0], sparse_part.alpha[0], true)}, 1));
    out.groups.push_back({next_col, next_col + columns_rest.numel(), 2, true, true});
    next_col += columns_rest.numel();
  }
  if (columns_salient.numel() > 0) {
    out.codes.push_back(pick(sal.positive[0], columns_salient).to(torch::kChar) * 2 +
                        pick(sal.positive[1], columns_salient).to(torch::kChar));
    std::vector<Tensor> lv;
    for (bool first : {false, true})
      for (bool second : {false, true})
        lv.push_back(level(sal.mu[0], sal.alpha[0], first) + level(sal.mu[1], sal.alpha[1], second));
    out.levels.push_back(torch::cat(lv, 1));
    out.groups.push_back({next_col, next_col + columns_salient.numel(), 2, true, true});
    next_col += columns_salient.numel();
  }
}

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
  BlockCodes codes;
  std::vector<Tensor> perm;
  int64_t next_col = 0;
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
    const Binarized sal_part = binarize_rows_parts(Wb, sal, 2), sparse_part = binarize_rows_parts(Wb, sparse, 1),
                    conc_part = binarize_rows_parts(Wb, concentrated, 1);
    const Tensor Qb = sal_part.values + sparse_part.values + conc_part.values;
    const Tensor block_cols = torch::arange(B, torch::TensorOptions().dtype(torch::kLong).device(W.device()));
    const Tensor sal_dev = salient.to(W.device());
    const Tensor rest_cols = block_cols.masked_select(sal_dev.logical_not()), sal_cols = block_cols.masked_select(sal_dev);
    add_block_codes(codes, next_col, rest_cols, sal_cols, conc_part, sparse_part, sparse, sal_part);
    perm.push_back(torch::cat({rest_cols, sal_cols}) + c0);
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
  r.perm = torch::cat(perm);
  r.stored.codes = torch::cat(codes.codes, 1);
  r.stored.levels = torch::cat(codes.levels, 1);
  r.stored.groups = codes.groups;
  r.stored.scales = torch::ones({rows, int64_t(codes.groups.size())}, Q.options());
  r.stored.zeros = torch::zeros({rows, int64_t(codes.groups.size())}, Q.options());
  const double weights = double(rows) * double(cols), sf = double(salient_total) / double(cols);
  r.bits_paper = 1.0 + sf;
  r.bits_with_flags = r.bits_paper + (1.0 - sf);
  r.bits_total = r.bits_with_flags + 16.0 * stored_values / weights;
  return r;
}

}  // namespace toga
