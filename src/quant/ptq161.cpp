#include "quant/ptq161.h"

#include "util/error.h"

namespace toga {

using torch::Tensor;

QuantizedWeight ptq161_initial(const Tensor& w_in, int64_t k, const QuantSpec& high) {
  if (w_in.dim() != 2 || k < 0 || k > w_in.size(1)) fail("PTQ1.61 needs W [out, in] and 0 <= salient <= in");
  torch::NoGradGuard no_grad;
  const Tensor w = w_in.detach().to(torch::kFloat32);
  const int64_t in = w.size(1), n1 = in - k;
  QuantizedWeight q;
  std::vector<Tensor> codes, scales, zeros;
  if (n1 > 0) {
    const Tensor rest = w.narrow(1, 0, n1);
    const Tensor mu = rest.mean(1, true);
    const Tensor alpha = rest.abs().mean(1, true).clamp_min(1e-8);
    codes.push_back((rest - mu >= 0).to(torch::kChar));
    scales.push_back(2 * alpha);
    zeros.push_back(0.5 - mu / (2 * alpha));
    q.groups.push_back({0, n1, 1, false, false});
  }
  if (k > 0) {
    QuantSpec s = high;
    s.group_size = 0;
    const GroupParams p = find_params(w, s);  // the range of the whole row
    codes.push_back(quantize_codes(w.narrow(1, n1, k), p, s).to(torch::kChar));
    scales.push_back(p.scale);
    zeros.push_back(p.zero);
    q.groups.push_back({n1, in, s.bits, s.symmetric, false});
  }
  q.codes = torch::cat(codes, 1);
  q.scales = torch::cat(scales, 1);
  q.zeros = torch::cat(zeros, 1);
  return q;
}

Tensor ptq161_loss(const Tensor& out, const Tensor& target) {
  const Tensor cos = torch::cosine_similarity(out, target, -1);
  return torch::mse_loss(out, target) - torch::log(cos.mean());
}

namespace {

struct Learned {
  QuantizedLinear* q;
  int64_t n1;                     // the binarized columns [0, n1)
  Tensor sign, mu, fixed;         // sign ±1 [rows, n1], μ [rows, 1], the salient columns' values
  Tensor alpha, r1, r2;           // parameters
  Tensor weight() const {
    const Tensor bin = r1 * r2 * (alpha * sign + mu);
    return fixed.size(1) > 0 ? torch::cat({bin, fixed}, 1) : bin;
  }
};

}  // namespace

std::vector<double> ptq161_refine_block(Model& m, int layer, const std::vector<QuantizedLinear*>& sites,
                                        const std::vector<Tensor>& inputs, const std::vector<std::vector<Tensor>>& targets,
                                        const Ptq161Training& t) {
  if (t.epochs < 0) fail("PTQ1.61: negative epoch count {}", t.epochs);
  for (const auto& tg : targets)
    if (tg.size() != inputs.size()) fail("PTQ1.61: {} target batches for {} input batches", tg.size(), inputs.size());
  const auto dtype = m.dtype();
  const auto pdtype = dtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  std::vector<Learned> learned;
  for (QuantizedLinear* q : sites) {
    const auto& g0 = q->weight.groups.front();
    if (g0.bits != 1 || g0.codebook) fail("PTQ1.61: site '{}' has no binarized columns to refine", q->site);
    Learned l;
    l.q = q;
    l.n1 = g0.col_end;
    const auto dev = m.site(q->site).weight.device();
    const Tensor scale = q->weight.scales.select(1, 0).unsqueeze(1).to(dev, pdtype);
    const Tensor zero = q->weight.zeros.select(1, 0).unsqueeze(1).to(dev, pdtype);
    l.sign = q->weight.codes.narrow(1, 0, l.n1).to(dev, pdtype) * 2 - 1;
    l.mu = (0.5 - zero) * scale;
    const Tensor values = dequantize(q->weight).to(dev, pdtype);
    l.fixed = values.narrow(1, l.n1, values.size(1) - l.n1).contiguous();
    l.alpha = (scale / 2).clone().requires_grad_(true);
    l.r1 = torch::ones_like(l.mu).requires_grad_(true);
    l.r2 = torch::ones({1, l.n1}, l.mu.options()).requires_grad_(true);
    learned.push_back(l);
  }
  std::vector<Tensor> alphas, scales;
  for (const auto& l : learned) {
    alphas.push_back(l.alpha);
    scales.push_back(l.r1);
    scales.push_back(l.r2);
  }
  using torch::optim::AdamWOptions;
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(alphas, std::make_unique<AdamWOptions>(AdamWOptions(t.lr_alpha).weight_decay(0)));
  groups.emplace_back(scales, std::make_unique<AdamWOptions>(AdamWOptions(t.lr_scale).weight_decay(0)));
  torch::optim::AdamW opt(groups, AdamWOptions(t.lr_scale).weight_decay(0));
  for (auto& l : learned) {
    Learned* lp = &l;
    m.site(l.q->site).custom_weight = [lp, dtype](const Tensor&) { return lp->weight().to(dtype); };
  }
  std::vector<double> epoch_loss;
  try {
    torch::AutoGradMode grad(true);
    for (int e = 0; e < t.epochs; ++e) {
      double sum = 0;
      int64_t steps = 0;
      for (size_t b = 0; b < inputs.size(); ++b)
        for (int64_t i = 0; i < inputs[b].size(0); ++i) {
          opt.zero_grad();
          const Tensor out = m.block_forward(layer, inputs[b].narrow(0, i, 1), 0).to(pdtype);
          Tensor loss = torch::zeros({}, out.options());
          for (const auto& tg : targets) loss = loss + ptq161_loss(out, tg[b].narrow(0, i, 1).to(pdtype));
          loss.backward();
          opt.step();
          sum += loss.item<double>();
          ++steps;
        }
      epoch_loss.push_back(sum / double(std::max<int64_t>(steps, 1)));
    }
  } catch (...) {
    for (auto& l : learned) m.site(l.q->site).custom_weight = nullptr;
    throw;
  }
  torch::NoGradGuard no_grad;
  for (auto& l : learned) {
    m.site(l.q->site).custom_weight = nullptr;
    QuantizedLinear& q = *l.q;
    // r₁(α(2c − 1) + μ) = 2αr₁ (c − (0.5 − μ/(2α))): scale and zero of the 1-bit group.
    const Tensor alpha = l.alpha.detach(), r1 = l.r1.detach();
    const auto dev = q.weight.scales.device();
    const Tensor scale = (2 * alpha * r1).to(dev, torch::kFloat32), zero = (0.5 - l.mu / (2 * alpha)).to(dev, torch::kFloat32);
    q.weight.scales = q.weight.scales.clone();
    q.weight.zeros = q.weight.zeros.clone();
    q.weight.scales.select(1, 0).copy_(scale.squeeze(1).to(torch::kFloat16).to(torch::kFloat32));
    q.weight.zeros.select(1, 0).copy_(zero.squeeze(1).to(torch::kFloat16).to(torch::kFloat32));
    const int64_t in = q.weight.codes.size(1);
    Tensor cs = torch::ones({in}, q.weight.scales.options());
    cs.narrow(0, 0, l.n1).copy_(l.r2.detach().squeeze(0));
    q.weight.column_scales = cs.to(torch::kFloat16).to(torch::kFloat32);
    if (!torch::isfinite(q.weight.scales).all().item<bool>() || !torch::isfinite(q.weight.zeros).all().item<bool>() ||
        !torch::isfinite(q.weight.column_scales).all().item<bool>())
      fail("PTQ1.61: site '{}' learned a non-finite scale (α reached 0?)", q.site);
    attach_quantized_linear(m, q);
  }
  return epoch_loss;
}

}  // namespace toga
