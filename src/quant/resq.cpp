#include "quant/resq.h"

#include <cmath>

#include "quant/rotation.h"
#include "quant/transforms.h"
#include "util/error.h"
#include "util/progress.h"

namespace toga {

using torch::Tensor;

namespace {

// Eigenvectors of a symmetric second moment, damped by 1 % of its mean diagonal, in columns of
// ascending eigenvalue.
Tensor pca_basis(const Tensor& c, double damp) {
  const Tensor d = c + damp * c.diagonal().mean() * torch::eye(c.size(0), c.options());
  return std::get<1>(torch::linalg_eigh(d));  // ascending
}

// U·diag(R(n − k), R(k)): random orthogonal mixing inside the low and the high subspace.
Tensor mixed_in_subspaces(const Tensor& u, int64_t k, uint64_t seed) {
  return u.matmul(partitioned_transform_f64("rotation", u.size(0), k, seed));
}

}  // namespace

ResqBases resq_bases(Model& m, const Tensor& windows, double damp) {
  const auto& c = m.config;
  const int64_t hidden = c.hidden_size, hd = c.head_dim, kv = c.num_key_value_heads;
  Tensor ca = torch::zeros({hidden, hidden}, torch::kFloat64);
  std::vector<Tensor> cv(m.blocks.size());
  for (auto& t : cv) t = torch::zeros({kv, hd, hd}, torch::kFloat64);
  std::vector<ObserverHandle> handles;
  for (size_t l = 0; l < m.blocks.size(); ++l) {
    Block& b = m.blocks[l];
    // Per-batch products in the model's precision (float32 for reduced dtypes), accumulated in
    // float64: the calibration statistics' convention (quant/calibration.h).
    auto residual = [&ca](const LinearSite&, const Tensor& x) {
      const Tensor x2 = x.reshape({-1, x.size(-1)}).to(x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32);
      ca += x2.t().matmul(x2).to(torch::kFloat64);
    };
    handles.push_back(b.q.add_observer(residual));
    handles.push_back(b.up.add_observer(residual));
    Tensor& acc = cv[l];
    handles.push_back(b.v.add_observer([&acc, kv, hd](const LinearSite& s, const Tensor& x) {
      const auto dt = x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
      const Tensor x2 = x.reshape({-1, x.size(-1)}).to(dt);
      Tensor v = x2.matmul(s.weight.to(dt).t());
      if (s.bias.defined()) v = v + s.bias.to(dt);
      const Tensor vh = v.reshape({-1, kv, hd}).transpose(0, 1);  // [kv, N, hd]
      acc += vh.transpose(1, 2).matmul(vh).to(torch::kFloat64);
    }));
  }
  {
    torch::NoGradGuard no_grad;
    const int64_t per_batch = std::max<int64_t>(1, 8192 / windows.size(1));
    Progress progress("resq pca", windows.size(0));
    for (int64_t i = 0; i < windows.size(0); i += per_batch) {
      const int64_t n = std::min(per_batch, windows.size(0) - i);
      m.forward_hidden(windows.narrow(0, i, n).to(m.device()));
      progress.update(i + n);
    }
    progress.finish();
  }
  handles.clear();
  ResqBases b;
  b.residual = pca_basis(ca, damp);
  for (const Tensor& v : cv) {
    std::vector<Tensor> heads;
    for (int64_t g = 0; g < kv; ++g) heads.push_back(pca_basis(v[g], damp));
    b.values.push_back(torch::stack(heads));
  }
  return b;
}

nlohmann::json resq_prepare(Model& m, const Tensor& windows, const QuantizeOptions& o) {
  if (!windows.defined()) fail("ResQ needs calibration windows for its PCA");
  const auto& c = m.config;
  const double f = o.salient_fraction;
  if (!(f >= 0 && f < 1)) fail("ResQ's high-precision fraction must be in [0, 1), got {}", f);
  fold_norm_gains(m);  // ResQ's pitfall: the PCA of the folded model
  const ResqBases bases = resq_bases(m, windows, 0.01);
  const int64_t k = std::llround(f * double(c.hidden_size)), kv_k = std::llround(f * double(c.head_dim));
  const uint64_t seed = 0x5e51;
  rotate_residual(m, mixed_in_subspaces(bases.residual, k, seed));
  for (size_t l = 0; l < m.blocks.size(); ++l) {
    std::vector<Tensor> per_head;
    for (int64_t g = 0; g < c.num_key_value_heads; ++g)
      per_head.push_back(mixed_in_subspaces(bases.values[l][g], kv_k, seed + 2 * (l * 64 + uint64_t(g)) + 2));
    rotate_values(m, int(l), torch::stack(per_head));
  }
  return {{"method", "resq"},
          {"pca_windows", windows.size(0)},
          {"pca_seqlen", windows.size(1)},
          {"basis", "full_shared"},
          {"high_fraction", f},
          {"residual_high_channels", k},
          {"value_high_dims_per_head", kv_k},
          {"deviations", "no online key rotation; uniform KV cache; o_proj high part one partition; PCA on --calib windows"}};
}

Plan resq_plan(const Model& m, const QuantizeOptions& o) {
  QuantizeOptions u = o;
  u.reorder = false;  // the rotation already put the high-variance subspace last
  Plan p = uniform_plan(m, u, "resq");
  const auto& c = m.config;
  const int64_t hd = c.head_dim, kv_k = std::llround(o.salient_fraction * double(hd));
  std::vector<int64_t> head_tails;
  for (int64_t h = 0; h < c.num_attention_heads; ++h)
    for (int64_t j = hd - kv_k; j < hd; ++j) head_tails.push_back(h * hd + j);
  for (size_t l = 0; l < m.blocks.size(); ++l) {
    SitePlan& op = p.sites.at(m.blocks[l].o.name);
    op.salient = torch::tensor(head_tails, torch::kLong);
  }
  set_down_proj_transform(p, m, o.online_transform, 0x5e51 + 1000, "ResQ");
  return p;
}

QuantizeOptions resq_defaults() {
  QuantizeOptions o;
  o.method = "gptq";
  o.weight_low = {4, true, 0};
  o.weight_low.mse_clip = true;  // GPTQ's w_clip
  o.weight_high = {8, true, 0};
  o.weight_high.mse_clip = true;
  o.act_low = {4, false, 0};
  o.act_high = {8, false, 0};
  o.kv = {4, false, 0};
  o.salient_fraction = 0.125;
  o.reorder = false;
  return o;
}

}  // namespace toga
