#include "quant/rotation.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "quant/transforms.h"
#include "util/error.h"

namespace toga {

namespace {

using torch::Tensor;

void check_rotatable(const Model& m, const char* what) {
  for (size_t l = 0; l < m.blocks.size(); ++l) {
    const Block& b = m.blocks[l];
    if (b.attn_in.defined() || b.attn_out.defined() || b.mlp_in.defined() || b.mlp_out.defined())
      fail("{}: block {} is pruned (DISP-LLM index lists); a rotation mixes every residual channel, so rotate before pruning",
           what, l);
    for (const LinearSite* s : b.sites())
      if (s->kernel || s->in_index.defined() || s->out_index.defined() || s->in_transform.defined() || s->act.active() ||
          s->custom_weight || s->custom_input)
        fail("{}: site '{}' is already reordered, transformed or quantized; rotate the unquantized model", what, s->name);
  }
}

// W (dtype kept) replaced by f(W in float64).
template <typename F>
void update(Tensor& w, F f) {
  torch::NoGradGuard no_grad;
  const auto dtype = w.scalar_type();
  w = f(w.to(torch::kFloat64)).to(dtype).contiguous();
}

Tensor checked_orthogonal(const Tensor& r, int64_t n, const char* what) {
  if (r.dim() != 2 || r.size(0) != n || r.size(1) != n)
    fail("{}: the rotation must be [{}, {}], got {} dims of sizes {}", what, n, n, r.dim(), fmt::join(r.sizes(), "x"));
  const Tensor rd = r.to(torch::kFloat64);
  const double err = (rd.t().matmul(rd) - torch::eye(n, torch::kFloat64)).abs().max().item<double>();
  if (err > 1e-4) fail("{}: the matrix is not orthogonal (max |RᵀR − I| = {:.3g})", what, err);
  return rd;
}

}  // namespace

void fold_norm_gains(Model& m) {
  check_rotatable(m, "folding the norm gains");
  auto fold = [](Tensor& gain, std::initializer_list<LinearSite*> readers) {
    const Tensor g = gain.to(torch::kFloat64);
    for (LinearSite* s : readers) update(s->weight, [&](const Tensor& w) { return w * g.unsqueeze(0); });
    torch::NoGradGuard no_grad;
    gain = torch::ones_like(gain);
  };
  for (Block& b : m.blocks) {
    fold(b.attn_norm, {&b.q, &b.k, &b.v});
    fold(b.mlp_norm, {&b.gate, &b.up});
  }
  untie_embedding(m);
  fold(m.final_norm, {&m.lm_head});
}

void untie_embedding(Model& m) {
  if (!m.config.tie_word_embeddings) return;
  m.lm_head.weight = m.embed.clone();
  m.config.tie_word_embeddings = false;
}

void rotate_residual(Model& m, const Tensor& r) {
  check_rotatable(m, "rotating the residual stream");
  const int64_t hidden = m.config.hidden_size;
  const Tensor rd = checked_orthogonal(r, hidden, "rotating the residual stream");
  auto norms_are_unit = [](const Tensor& g) { return torch::equal(g, torch::ones_like(g)); };
  bool unit = norms_are_unit(m.final_norm);
  for (const Block& b : m.blocks) unit = unit && norms_are_unit(b.attn_norm) && norms_are_unit(b.mlp_norm);
  if (!unit) fail("rotating the residual stream needs unit RMSNorm gains (fold_norm_gains first)");
  untie_embedding(m);
  const Tensor R = rd.to(m.embed.device());
  auto reader = [&](LinearSite& s) { update(s.weight, [&](const Tensor& w) { return w.matmul(R); }); };
  auto writer = [&](LinearSite& s) {
    update(s.weight, [&](const Tensor& w) { return R.t().matmul(w); });
    if (s.bias.defined()) update(s.bias, [&](const Tensor& b) { return b.matmul(R); });
  };
  update(m.embed, [&](const Tensor& e) { return e.matmul(R); });
  for (Block& b : m.blocks) {
    for (LinearSite* s : {&b.q, &b.k, &b.v, &b.gate, &b.up}) reader(*s);
    writer(b.o);
    writer(b.down);
  }
  reader(m.lm_head);
}

void rotate_values(Model& m, int layer, const Tensor& r2) {
  check_rotatable(m, "rotating the value heads");
  const auto& c = m.config;
  const int64_t hd = c.head_dim, kv = c.num_key_value_heads, heads = c.num_attention_heads;
  Tensor R;  // [kv, hd, hd]
  if (r2.dim() == 2) {
    R = checked_orthogonal(r2, hd, "rotating the value heads").unsqueeze(0).expand({kv, hd, hd});
  } else {
    if (r2.dim() != 3 || r2.size(0) != kv) fail("rotating the value heads: expected [{}, {}, {}] matrices", kv, hd, hd);
    std::vector<Tensor> per_head;
    for (int64_t g = 0; g < kv; ++g) per_head.push_back(checked_orthogonal(r2[g], hd, "rotating the value heads"));
    R = torch::stack(per_head);
  }
  R = R.to(m.embed.device());
  Block& b = m.blocks.at(size_t(layer));
  // v_proj: rows of kv head g → R_gᵀ·W_g; bias b_g·R_g.
  update(b.v.weight, [&](const Tensor& w) { return R.transpose(1, 2).matmul(w.reshape({kv, hd, -1})).reshape(w.sizes()); });
  if (b.v.bias.defined())
    update(b.v.bias, [&](const Tensor& v) { return v.reshape({kv, 1, hd}).matmul(R).reshape(v.sizes()); });
  // o_proj: the input columns of query head j → W·R_{group(j)}.
  const Tensor per_query = R.repeat_interleave(heads / kv, 0);  // [heads, hd, hd]
  update(b.o.weight, [&](const Tensor& w) {
    return w.reshape({w.size(0), heads, 1, hd}).matmul(per_query).reshape(w.sizes());
  });
}

Tensor cayley_sgd_step(const Tensor& x_in, const Tensor& g_in, double lr, bool reorthonormalize) {
  if (x_in.dim() != 2 || x_in.size(0) != x_in.size(1) || !g_in.sizes().equals(x_in.sizes()))
    fail("a Cayley step needs a square parameter and a gradient of its shape");
  if (!(lr > 0)) fail("a Cayley step needs a positive learning rate, got {}", lr);
  torch::NoGradGuard no_grad;
  Tensor X = x_in.detach().to(torch::kFloat64);
  X = X / X.norm(2, 1, true);
  if (reorthonormalize) X = orthonormalized(X);
  const Tensor V = -g_in.detach().to(torch::kFloat64).t();
  const Tensor w_hat = V.matmul(X) - 0.5 * X.t().matmul(X.matmul(V).matmul(X));
  const Tensor W = w_hat - w_hat.t();
  const double norm1 = W.abs().sum(0).max().item<double>();
  const double a = std::min(lr, 1.0 / (norm1 + 1e-8));
  const Tensor xt = X.t();
  Tensor Y = xt + a * V;
  for (int i = 0; i < 5; ++i) Y = xt + a * W.matmul(xt + Y) / 2;
  return Y.t().to(x_in.scalar_type());
}

nlohmann::json rotate_model(Model& m, const RotationOptions& o) {
  if (o.kind != "hadamard" && o.kind != "rotation") fail("--rotate must be hadamard or rotation, got '{}'", o.kind);
  fold_norm_gains(m);
  rotate_residual(m, orthogonal_transform_f64(o.kind, m.config.hidden_size, o.seed));
  if (o.values)
    for (int l = 0; l < int(m.blocks.size()); ++l)
      rotate_values(m, l, orthogonal_transform_f64(o.kind, m.config.head_dim, o.seed + 1 + uint64_t(l)));
  return {{"kind", o.kind}, {"seed", o.seed}, {"r1", m.config.hidden_size}, {"r2", o.values ? m.config.head_dim : 0}};
}

}  // namespace toga
