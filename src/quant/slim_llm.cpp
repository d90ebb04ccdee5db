#include "quant/slim_llm.h"

#include <algorithm>
#include <limits>

#include "util/error.h"

namespace toga {

using torch::Tensor;

namespace {

int64_t group_count(int64_t in, int64_t group_size) { return group_size > 0 ? (in + group_size - 1) / group_size : 1; }

}  // namespace

Tensor slim_group_salience(const Tensor& w, const Tensor& h, int64_t group_size) {
  torch::NoGradGuard no_grad;
  Tensor H = h.to(torch::kDouble).clone();
  H.diagonal().masked_fill_(H.diagonal() == 0, 1.0);
  const Tensor d = inverse_hessian_factor(H, 0.0).diagonal();
  const Tensor s = (w.to(torch::kDouble).square() / d.square().unsqueeze(0)).sum(0);
  const int64_t in = w.size(1), step = group_size > 0 ? group_size : in;
  std::vector<Tensor> out;
  for (int64_t c = 0; c < in; c += step) out.push_back(s.narrow(0, c, std::min(step, in - c)).sum());
  return torch::stack(out);
}

Tensor slim_rtn(const Tensor& w, const std::vector<int>& bits, const QuantSpec& base) {
  const int64_t in = w.size(1), step = base.group_size > 0 ? base.group_size : in;
  if (int64_t(bits.size()) != group_count(in, base.group_size))
    fail("SliM-LLM: {} bit widths for {} column groups", bits.size(), group_count(in, base.group_size));
  std::vector<Tensor> parts;
  for (size_t g = 0; g < bits.size(); ++g) {
    QuantSpec s = base;
    s.bits = bits[g];
    s.group_size = 0;
    const Tensor cols = w.narrow(1, int64_t(g) * step, std::min(step, in - int64_t(g) * step));
    const GroupParams p = find_params(cols, s);
    parts.push_back(p.scale * (quantize_codes(cols, p, s) - p.zero));
  }
  return torch::cat(parts, 1).to(w.scalar_type());
}

double output_kl(const Tensor& x, const Tensor& w_quantized, const Tensor& w) {
  torch::NoGradGuard no_grad;
  double total = 0;
  const int64_t n = x.size(0), chunk = 1024;
  const Tensor wq = w_quantized.to(torch::kDouble), wf = w.to(torch::kDouble);
  for (int64_t r = 0; r < n; r += chunk) {
    const Tensor xs = x.narrow(0, r, std::min(chunk, n - r)).to(torch::kDouble);
    const Tensor log_p_hat = torch::log_softmax(xs.matmul(wq.t()), -1), log_p = torch::log_softmax(xs.matmul(wf.t()), -1);
    total += (log_p_hat.exp() * (log_p_hat - log_p)).sum().item<double>();
  }
  return total / double(std::max<int64_t>(n, 1));
}

SlimAllocation slim_allocate_bits(const Tensor& w, const Tensor& salience, const Tensor& x, const QuantSpec& base) {
  const int b = base.bits;
  if (b < 2 || b > 7) fail("SliM-LLM's target must leave room for b − 1 and b + 1 bits (2..7), got {}", b);
  const int64_t G = salience.numel();
  SlimAllocation a;
  a.bits.assign(size_t(G), b);
  const Tensor ranked = std::get<1>(torch::sort(salience.to(torch::kDouble), /*stable=*/true, 0, /*descending=*/false));
  double best = std::numeric_limits<double>::infinity();
  for (int64_t i = 1; i <= G / 2 - 1; ++i) {
    std::vector<int> bits(size_t(G), b);
    for (int64_t k = 0; k < i; ++k) {
      bits[size_t(ranked[k].item<int64_t>())] = b - 1;
      bits[size_t(ranked[G - 1 - k].item<int64_t>())] = b + 1;
    }
    const double score = output_kl(x, slim_rtn(w, bits, base), w);
    a.scores.push_back(score);
    if (score < best) best = score, a.bits = bits, a.shifted = i;
  }
  return a;
}

GroupParams slim_range_search(const Tensor& x, const QuantSpec& spec) {
  QuantSpec s = spec;
  s.group_size = 0;
  s.mse_clip = false;
  s.clip_ratio = 1.0;
  GroupParams best = find_params(x, s);
  if (s.bits == 1) return best;
  // Scaling the range by p scales the step by p and leaves the zero point where it was (it is
  // round(−min·p / (step·p))), so every candidate comes from the unscaled fit.
  const Tensor xc = x.to(best.scale.scalar_type());
  const Tensor scale1 = best.scale;
  Tensor best_err = torch::full_like(scale1, std::numeric_limits<double>::infinity());
  std::vector<double> multipliers{1.0};
  for (int k = 1; k <= 50; ++k) multipliers.push_back(1.0 + 0.1 * k / 50), multipliers.push_back(1.0 - 0.1 * k / 50);
  for (double p : multipliers) {
    const GroupParams cand{scale1 * p, best.zero};
    const Tensor err = (cand.scale * (quantize_codes(xc, cand, s) - cand.zero) - xc).abs().pow(2.4).sum(-1, true);
    const Tensor better = err < best_err;
    best_err = torch::where(better, err, best_err);
    best.scale = torch::where(better, cand.scale, best.scale);
  }
  return best;
}

SlimLlmResult slim_llm_quantize(const Tensor& w, const Tensor& h, const Tensor& x, const QuantSpec& base, GptqOptions o) {
  if (w.dim() != 2 || h.size(0) != w.size(1) || x.dim() != 2 || x.size(1) != w.size(1))
    fail("SliM-LLM needs W [out, in], H [in, in] and inputs [tokens, in]");
  torch::NoGradGuard no_grad;
  Tensor H = h.to(torch::kDouble).clone();
  H.diagonal().add_(0.01);  // SliM-LLM's absolute damping, before GPTQ's relative one
  QuantSpec low = base;
  low.binary_centered = true;  // a 1-bit group is μ ± α, in the allocation's RTN and in GPTQ
  SlimLlmResult r;
  r.allocation = slim_allocate_bits(w, slim_group_salience(w, H, base.group_size), x, low);
  o.low = low;
  o.high = low;
  o.k_salient = 0;
  o.group_bits = r.allocation.bits;
  o.fit = slim_range_search;
  r.gptq = gptq_quantize(w, H, o);
  double bits = 0;
  for (const auto& g : r.gptq.weight.groups) bits += double(g.bits) * double(g.col_end - g.col_begin);
  r.average_bits = bits / double(w.size(1));
  return r;
}

}  // namespace toga
