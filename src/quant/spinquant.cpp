#include "quant/spinquant.h"

#include <cmath>

#include <fmt/format.h>

#include "quant/apply_plan.h"
#include "quant/quantizer.h"
#include "quant/rotation.h"
#include "quant/transforms.h"
#include "util/error.h"
#include "util/progress.h"

namespace toga {

using torch::Tensor;

namespace {

// x·diag(R, …, R) over the last dimension's heads of width R.size(0).
Tensor per_head(const Tensor& x, const Tensor& r) {
  const int64_t hd = r.size(0);
  auto sizes = x.sizes().vec();
  return x.reshape({-1, x.size(-1) / hd, hd}).matmul(r).reshape(sizes);
}

void clear_hooks(Model& m) {
  for (Block& b : m.blocks)
    for (LinearSite* s : b.sites()) s->custom_input = s->custom_weight = s->custom_output = nullptr;
  m.kv_transform = nullptr;
}

}  // namespace

LearnedRotations learn_rotations(Model& m, const Tensor& windows, const SpinQuantTraining& o) {
  if (!windows.defined() || windows.dim() != 2 || windows.size(0) < 1) fail("SpinQuant needs training windows [n, T]");
  const auto& c = m.config;
  const auto dtype = m.dtype();
  const auto dev = m.device();
  for (const Block& b : m.blocks)
    if (!torch::equal(b.attn_norm, torch::ones_like(b.attn_norm)) || !torch::equal(b.mlp_norm, torch::ones_like(b.mlp_norm)))
      fail("SpinQuant learns rotations of a model with folded norm gains (fold_norm_gains first)");
  // Parameters in float32 (float64 for a float64 model); Cayley steps in float64.
  const auto pdtype = dtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  Tensor r1 = orthogonal_transform_f64("hadamard", c.hidden_size, o.seed + 1).to(dev, pdtype).requires_grad_(true);
  std::vector<Tensor> r2;
  for (size_t l = 0; l < m.blocks.size(); ++l)
    r2.push_back(orthogonal_transform_f64("hadamard", c.head_dim, o.seed + 2 + l).to(dev, pdtype).requires_grad_(true));
  const QuantSpec act = o.act;
  auto quant = [act](const Tensor& x) { return act.quantized() ? fake_quantize(x, act) : x; };
  auto to_model = [dtype](const Tensor& t) { return t.to(dtype); };
  for (size_t l = 0; l < m.blocks.size(); ++l) {
    Block& b = m.blocks[l];
    for (LinearSite* s : {&b.q, &b.k, &b.v, &b.gate, &b.up}) {
      s->custom_input = [&r1, quant, to_model](const Tensor& x) { return quant(x.matmul(to_model(r1))); };
      s->custom_weight = [&r1, to_model](const Tensor& w) { return w.matmul(to_model(r1)); };
    }
    Tensor& r2l = r2[l];
    b.v.custom_output = [&r2l, to_model](const Tensor& v) { return per_head(v, to_model(r2l)); };
    // o_proj reads the attention output of rotated values, a·R2 already: quantized as it is.
    b.o.custom_input = quant;
    b.o.custom_weight = [&r2l, to_model](const Tensor& w) { return per_head(w, to_model(r2l)); };
    const int64_t inter = b.down.in_features();
    // The same matrix the Plan's online transform regenerates (kind, seed 1000 + layer).
    const Tensor h = orthogonal_transform_f64(o.online_transform, inter, 1000 + l).to(dev, dtype);
    b.down.custom_input = [h, quant](const Tensor& x) { return quant(x.matmul(h)); };
    b.down.custom_weight = [h](const Tensor& w) { return w.matmul(h); };
  }
  if (o.kv.quantized()) {
    QuantSpec kv = o.kv;
    kv.group_size = c.head_dim;
    m.kv_transform = [kv](const Tensor& x) { return fake_quantize(x, kv); };
  }
  LearnedRotations out;
  const int steps = o.steps > 0 ? o.steps : int(windows.size(0));
  Progress progress("spinquant", steps, o.progress);
  try {
    for (int step = 0; step < steps; ++step) {
      const Tensor ids = windows.narrow(0, step % windows.size(0), 1).to(dev);
      const int64_t T = ids.size(1);
      const Tensor logits = m.forward(ids).narrow(1, 0, T - 1).to(torch::kFloat32);
      const Tensor loss = torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}),
                                                               ids.narrow(1, 1, T - 1).reshape({-1}));
      loss.backward();
      const double lr = 0.5 * o.lr * (1 + std::cos(M_PI * double(step) / double(steps)));  // cosine to 0
      torch::NoGradGuard no_grad;
      auto update = [&](Tensor& p) {
        // Re-orthonormalized every step (SpinQuant: with probability 1/101), so the parameter
        // never drifts from the rotations by the Cayley iteration's truncation error.
        const Tensor next = cayley_sgd_step(p.detach(), p.grad(), lr, /*reorthonormalize=*/true);
        p.detach_();
        p.copy_(next);
        p.mutable_grad() = Tensor();
        p.requires_grad_(true);
      };
      update(r1);
      for (Tensor& r : r2) update(r);
      out.losses.push_back(loss.item<double>());
      progress.update(step + 1, fmt::format("CE {:.4f} (W16A{}KV{})", out.losses.back(), act.bits, o.kv.bits));
    }
  } catch (...) {
    clear_hooks(m);
    throw;
  }
  progress.finish();
  clear_hooks(m);
  out.r1 = r1.detach().to(torch::kCPU, torch::kFloat64);
  for (const Tensor& r : r2) out.r2.push_back(r.detach().to(torch::kCPU, torch::kFloat64));
  return out;
}

nlohmann::json spinquant_prepare(Model& m, const Tensor& windows, const QuantizeOptions& o) {
  fold_norm_gains(m);
  SpinQuantTraining t;
  t.act = o.act_low;
  t.kv = o.kv;
  t.steps = o.rotation_steps;
  t.online_transform = o.online_transform;
  t.progress = o.progress;
  const LearnedRotations r = learn_rotations(m, windows, t);
  // The learned matrices are orthogonal to the Cayley steps' accuracy; fold their nearest exact
  // rotations so that the folded model is the same function.
  rotate_residual(m, orthonormalized(r.r1));
  for (size_t l = 0; l < m.blocks.size(); ++l) rotate_values(m, int(l), orthonormalized(r.r2[l]));
  return {{"method", "spinquant"},
          {"training", {{"steps", r.losses.size()}, {"seqlen", windows.size(1)}, {"lr", t.lr}, {"act_bits", t.act.bits},
                        {"kv_bits", t.kv.bits}, {"loss", r.losses}}},
          {"deviations", "no online Hadamard on q/k after RoPE (R3); trained on the --calib windows"}};
}

Plan spinquant_plan(const Model& m, const QuantizeOptions& o) {
  QuantizeOptions u = o;
  u.reorder = false;
  u.salient_fraction = 0;
  Plan p = uniform_plan(m, u, "spinquant");
  // Seeds 1000 + layer: the matrices training used (learn_rotations).
  set_down_proj_transform(p, m, o.online_transform, 1000, "SpinQuant");
  return p;
}

QuantizeOptions spinquant_defaults() {
  QuantizeOptions o;
  o.method = "gptq";
  o.weight_low = {4, true, 0};
  o.weight_low.mse_clip = true;
  o.act_low = {4, false, 0};
  o.act_high = {16};
  o.kv = {4, false, 0};
  o.salient_fraction = 0;
  o.reorder = false;
  return o;
}

}  // namespace toga
