// Gradients through the whole model, as the TOGA search uses them: the language-modeling loss of a
// frozen, fake-quantized model backpropagated to soft masks attached to its sites.
//
// - Weight-only mode: the loss is smooth in every mask, so in float64 autograd must agree with
//   central finite differences to a relative 1e-6. A float32 step left in the float64 forward adds
//   ~1e-7 noise to the loss, percents of a typical quotient, so this also checks that the forward
//   keeps float64.
// - Weight-activation mode: rounding makes finite differences meaningless; the gradient must equal
//   that of the same model with the straight-through estimator written independently here.
// - bf16 (the search's training dtype): the same backward runs and reaches every mask.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "model/model.h"
#include "quant/quantizer.h"
#include "reference_llama.h"
#include "tiny_model.h"

using namespace toga;
using namespace toga::test;
using torch::Tensor;

namespace {

// Mean next-token cross entropy; reduced-precision logits are promoted to float32 first, as a
// training loop does.
Tensor lm_loss(const Model& m, const Tensor& ids) {
  const int64_t T = ids.size(1);
  Tensor logits = m.forward(ids).narrow(1, 0, T - 1);
  if (logits.scalar_type() != torch::kDouble) logits = logits.to(torch::kFloat32);
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}),
                                              ids.narrow(1, 1, T - 1).reshape({-1}));
}

double loss_value(const Model& m, const Tensor& ids) {
  torch::NoGradGuard no_grad;
  return lm_loss(m, ids).item<double>();
}

struct Mask {
  std::string name;
  int layer;
  Tensor value;  // leaf, requires grad, 1-D
};

// An activation quantizer for a site's input (weight-activation mode).
using ActQuant = std::function<Tensor(const Tensor&)>;

// Attaches the search's masks to every block site, all leaves in `dtype` drawn from one seed:
// - per site, a mixed-precision weight mask M over input channels,
//   W_eff = Q_h(W)*M + Q_l(W)*(1-M), with Q_h/Q_l (INT8/INT3 per output channel) computed once from
//   the frozen weight, so that W_eff is linear in M;
// - structured-pruning masks x*m on the inputs of q/k/v (one mask shared by the three), gate/up
//   (shared) and down_proj, and y*m on the outputs of o_proj and down_proj.
// `act` (optional) quantizes every site's input after its pruning mask.
std::vector<Mask> attach_masks(Model& m, torch::Dtype dtype, const ActQuant& act = nullptr) {
  torch::manual_seed(17);
  const auto opts = torch::TensorOptions().dtype(dtype);
  std::vector<Mask> masks;
  auto add = [&](const std::string& name, int layer, int64_t n, double lo, double hi) {
    masks.push_back({name, layer, (lo + (hi - lo) * torch::rand({n}, opts)).requires_grad_()});
    return masks.back().value;
  };
  QuantSpec high, low;
  high.bits = 8;
  low.bits = 3;
  const int64_t H = m.config.hidden_size, F = m.config.intermediate_size;
  for (int l = 0; l < static_cast<int>(m.blocks.size()); ++l) {
    Block& b = m.blocks[l];
    const std::string L = "layers." + std::to_string(l) + ".";
    const Tensor attn_in = add(L + "attn_input", l, H, 0.2, 1.0);
    const Tensor mlp_in = add(L + "mlp_input", l, H, 0.2, 1.0);
    const Tensor down_in = add(L + "down_input", l, F, 0.2, 1.0);
    const Tensor o_out = add(L + "o_output", l, H, 0.2, 1.0);
    const Tensor down_out = add(L + "down_output", l, H, 0.2, 1.0);
    const std::vector<std::pair<LinearSite*, Tensor>> in_masks = {
        {&b.q, attn_in}, {&b.k, attn_in}, {&b.v, attn_in}, {&b.o, Tensor()},
        {&b.gate, mlp_in}, {&b.up, mlp_in}, {&b.down, down_in}};
    for (const auto& [site, in_mask] : in_masks) {
      const Tensor wm = add(site->name + ".weight_mask", l, site->in_features(), 0.05, 0.95);
      const Tensor qh = fake_quantize(site->weight, high), ql = fake_quantize(site->weight, low);
      site->custom_weight = [qh, ql, wm](const Tensor& w) { return (qh * wm + ql * (1 - wm)).to(w.scalar_type()); };
      site->custom_input = [in_mask, act](const Tensor& x) {
        const Tensor y = in_mask.defined() ? (x * in_mask).to(x.scalar_type()) : x;
        return act ? act(y) : y;
      };
    }
    for (const auto& [site, out_mask] : {std::pair{&b.o, o_out}, std::pair{&b.down, down_out}})
      site->custom_output = [out_mask](const Tensor& y) { return (y * out_mask).to(y.scalar_type()); };
  }
  return masks;
}

// Backpropagates the loss; returns it.
double backward_loss(const Model& m, const Tensor& ids) {
  const Tensor loss = lm_loss(m, ids);
  loss.backward();
  return loss.item<double>();
}

void expect_weights_frozen(const Model& m) {
  std::vector<std::pair<std::string, Tensor>> params = {
      {"embed", m.embed}, {"final_norm", m.final_norm}, {"lm_head", m.lm_head.weight}};
  for (const Block& b : m.blocks) {
    params.push_back({"attn_norm", b.attn_norm});
    params.push_back({"mlp_norm", b.mlp_norm});
    for (const LinearSite* s : {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down}) params.push_back({s->name, s->weight});
  }
  for (const auto& [name, t] : params) {
    EXPECT_FALSE(t.requires_grad()) << name;
    EXPECT_FALSE(t.grad().defined()) << name;
  }
}

// Every layer has masks, and each of them received a non-zero gradient.
void expect_every_mask_reached(const std::vector<Mask>& masks, int layers) {
  std::vector<int> per_layer(layers, 0);
  for (const Mask& k : masks) {
    ASSERT_TRUE(k.value.grad().defined()) << k.name;
    EXPECT_TRUE(torch::isfinite(k.value.grad()).all().item<bool>()) << k.name;
    EXPECT_GT(k.value.grad().abs().max().item<double>(), 0.0) << k.name;
    ++per_layer.at(k.layer);
  }
  for (int l = 0; l < layers; ++l) EXPECT_EQ(per_layer[l], 12) << "layer " << l;
}

QuantSpec act_spec(int bits) {
  QuantSpec s;
  s.bits = bits;
  return s;
}

}  // namespace

TEST(Gradients, MaskGradientsMatchFiniteDifferencesInFloat64) {
  const ModelConfig c = gqa_gradient_config();
  Model m = random_model(c, 3, torch::kFloat64);
  const Tensor ids = random_ids(c, 5, 2, 8);
  const std::vector<Mask> masks = attach_masks(m, torch::kFloat64);
  backward_loss(m, ids);
  expect_weights_frozen(m);
  expect_every_mask_reached(masks, c.num_hidden_layers);

  // Every entry of every mask, by the fourth-order central difference
  //   (8 (L(+h) - L(-h)) - (L(+2h) - L(-2h))) / 12h,
  // whose truncation error is O(h^4) (~1e-12 here at h = 2e-3) while float64 rounding of the
  // loss (~3.5, perturbed by ~1e-15) contributes ~1e-12 / h. The plain two-point quotient at
  // h = 1e-6 is off by ~1e-9 from rounding, which is 1e-3 of the smallest entries (~2e-6); this one
  // meets a purely relative 1e-6 on every entry (measured worst ~3e-8), with no absolute floor.
  // ~1700 forwards of the tiny model: under a second.
  const double h = 2e-3;
  double worst = 0;
  std::string worst_at;
  int64_t checked = 0;
  for (const Mask& k : masks) {
    const Tensor grad = k.value.grad().contiguous();
    double* p = k.value.data_ptr<double>();
    for (int64_t i = 0; i < k.value.numel(); ++i) {
      const double saved = p[i];
      auto loss_at = [&](double d) {
        p[i] = saved + d;
        return loss_value(m, ids);
      };
      const double fd = (8 * (loss_at(h) - loss_at(-h)) - (loss_at(2 * h) - loss_at(-2 * h))) / (12 * h);
      p[i] = saved;
      const double g = grad[i].item<double>();
      const double err = std::abs(fd - g) / std::max(std::abs(fd), std::abs(g));
      if (!(err <= worst)) {
        worst = err;
        worst_at = fmt::format("{}[{}]: autograd {:.10g}, finite difference {:.10g}", k.name, i, g, fd);
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, 2 * (5 * 16 + 16 + 24 + 16 + 16 + 24 + 16 + 16));
  EXPECT_LT(worst, 1e-6) << worst_at;
}

TEST(Gradients, ActivationQuantizersPassTheStraightThroughGradient) {
  const ModelConfig c = gqa_gradient_config();
  const Tensor ids = random_ids(c, 5, 2, 8);
  // Mixed-precision activations: the last quarter of each site's input channels at INT8, the rest
  // at INT4, per token.
  const QuantSpec low = act_spec(4), high = act_spec(8);
  auto salient = [](const Tensor& x) { return x.size(-1) / 4; };

  // The product's quantizer: a hard {0,1} mask through fake_quantize_masked.
  Model a = random_model(c, 3, torch::kFloat64);
  const auto masks_a = attach_masks(a, torch::kFloat64, [&](const Tensor& x) {
    const int64_t in = x.size(-1), k = salient(x);
    const Tensor hard = torch::cat({torch::zeros({in - k}, x.options()), torch::ones({k}, x.options())});
    return fake_quantize_masked(x, hard, low, high);
  });
  const double loss_a = backward_loss(a, ids);

  // The same values, with the straight-through estimator written the textbook way.
  Model b = random_model(c, 3, torch::kFloat64);
  const auto masks_b = attach_masks(b, torch::kFloat64, [&](const Tensor& x) {
    const Tensor q = fake_quantize_activation(x.detach(), low, high, salient(x));
    return x + (q - x).detach();
  });
  const double loss_b = backward_loss(b, ids);

  // Without activation quantizers the loss moves: the quantizers are in the path.
  Model plain = random_model(c, 3, torch::kFloat64);
  attach_masks(plain, torch::kFloat64);
  EXPECT_GT(std::abs(loss_value(plain, ids) - loss_a), 1e-4);

  EXPECT_NEAR(loss_a, loss_b, 1e-12);
  expect_weights_frozen(a);
  expect_every_mask_reached(masks_a, c.num_hidden_layers);
  ASSERT_EQ(masks_a.size(), masks_b.size());
  for (size_t i = 0; i < masks_a.size(); ++i) {
    const Tensor ga = masks_a[i].value.grad(), gb = masks_b[i].value.grad();
    EXPECT_TRUE(torch::allclose(ga, gb, 1e-9, 1e-12 * gb.abs().max().item<double>()))
        << masks_a[i].name << " max |diff| " << (ga - gb).abs().max().item<double>();
  }
}

TEST(Gradients, Bfloat16BackwardReachesEveryMask) {
  const ModelConfig c = gqa_gradient_config();
  const Tensor ids = random_ids(c, 5, 2, 8);
  // Masks stay float32 (the master copy an optimizer updates); the transforms cast to bf16.
  for (bool with_act : {false, true}) {
    SCOPED_TRACE(with_act ? "weight-activation" : "weight-only");
    Model m = random_model(c, 3, torch::kBFloat16);
    ActQuant act;
    if (with_act)
      act = [](const Tensor& x) {
        const int64_t in = x.size(-1), k = in / 4;
        const Tensor hard = torch::cat({torch::zeros({in - k}), torch::ones({k})});
        return fake_quantize_masked(x, hard, act_spec(4), act_spec(8));
      };
    const auto masks = attach_masks(m, torch::kFloat32, act);
    EXPECT_EQ(m.forward(ids).scalar_type(), torch::kBFloat16);
    EXPECT_TRUE(std::isfinite(backward_loss(m, ids)));
    expect_weights_frozen(m);
    expect_every_mask_reached(masks, c.num_hidden_layers);
    for (const Mask& k : masks) EXPECT_EQ(k.value.grad().scalar_type(), torch::kFloat32) << k.name;
  }
}
