#include "search/supernet.h"

#include <algorithm>
#include <cmath>

#include "quant/calibration.h"
#include "quant/apply_plan.h"
#include "util/error.h"

namespace toga {

using torch::Tensor;

std::vector<MaskGroup> quant_mask_groups(const Model& model) {
  std::vector<MaskGroup> groups;
  static const char* kinds[] = {"attn_in", "o_in", "mlp_in", "down_in"};
  for (int l = 0; l < static_cast<int>(model.blocks.size()); ++l) {
    // input_groups() is the one place that says which sites share an input.
    auto shared = const_cast<Block&>(model.blocks[l]).input_groups();
    for (size_t g = 0; g < shared.size(); ++g) {
      MaskGroup m;
      m.layer = l;
      m.kind = kinds[g];
      m.channels = shared[g].front()->in_features();
      for (const LinearSite* s : shared[g]) {
        if (s->in_index.defined()) fail("site '{}' already reads a subset or permutation of its input: search a plain model", s->name);
        m.sites.push_back(s->name);
        m.weight_rows += s->out_features();
      }
      groups.push_back(std::move(m));
    }
  }
  return groups;
}

void compute_channel_orders(Model& model, std::vector<MaskGroup>& groups, const torch::Tensor& windows) {
  std::vector<std::vector<LinearSite*>> shared;
  for (const MaskGroup& g : groups) {
    std::vector<LinearSite*> sites;
    for (const auto& name : g.sites) sites.push_back(&model.site(name));
    shared.push_back(sites);
  }
  StatisticsCollector stats(shared, false);
  torch::NoGradGuard no_grad;
  const int64_t per_batch = std::max<int64_t>(1, 8192 / std::max<int64_t>(1, windows.size(1)));
  for (int64_t b = 0; b < windows.size(0); b += per_batch)
    model.forward(windows.narrow(0, b, std::min(per_batch, windows.size(0) - b)));
  for (MaskGroup& g : groups) g.order = salience_order(stats.at(g.sites.front()).mean_abs());
}

std::vector<Tensor> fixed_fraction_masks(const std::vector<MaskGroup>& groups, double fraction) {
  std::vector<Tensor> masks;
  for (const MaskGroup& g : groups) {
    const int64_t k = std::llround(fraction * double(g.channels));
    Tensor m = torch::zeros({g.channels});
    if (k > 0) m.narrow(0, g.channels - k, k).fill_(1.0);
    masks.push_back(m);
  }
  return masks;
}

Tensor weight_bits(const std::vector<MaskGroup>& groups, const std::vector<Tensor>& masks, const SupernetQuantizers& q) {
  if (masks.size() != groups.size()) fail("{} masks for {} mask groups", masks.size(), groups.size());
  const double hb = q.weight_high.bits, lb = q.weight_low.bits;
  Tensor bits = torch::zeros({}, torch::kFloat64);
  double total = 0;
  for (size_t i = 0; i < groups.size(); ++i) {
    const double rows = double(groups[i].weight_rows), n = double(groups[i].channels);
    const Tensor salient = masks[i].to(torch::kFloat64).sum();
    bits = bits + rows * (salient * hb + (n - salient) * lb);
    total += rows * n;
  }
  return bits / total;
}

Supernet::Supernet(Model& model, std::vector<MaskGroup> groups, SupernetQuantizers q)
    : groups_(std::move(groups)), q_(q), masks_(std::make_shared<std::vector<Tensor>>(groups_.size())) {
  for (size_t i = 0; i < groups_.size(); ++i) {
    const MaskGroup& g = groups_[i];
    if (!g.order.defined()) fail("mask group {} of layer {} has no channel order (compute_channel_orders)", g.kind, g.layer);
    for (const auto& name : g.sites) {
      LinearSite& s = model.site(name);
      const Tensor order = g.order.to(s.weight.device());
      s.weight = s.weight.index_select(1, order).detach();
      s.in_index = order;
      const auto masks = masks_;
      const SupernetQuantizers qs = q_;
      s.custom_weight = [masks, i, qs](const Tensor& w) {
        return fake_quantize_masked(w, (*masks)[i], qs.weight_low, qs.weight_high).to(w.scalar_type());
      };
      if (q_.act_low.quantized() || q_.act_high.quantized())
        s.custom_input = [masks, i, qs](const Tensor& x) {
          return fake_quantize_masked(x, (*masks)[i], qs.act_low, qs.act_high).to(x.scalar_type());
        };
    }
  }
}

void Supernet::set_masks(std::vector<Tensor> masks) {
  if (masks.size() != groups_.size()) fail("{} masks for {} mask groups", masks.size(), groups_.size());
  for (size_t i = 0; i < masks.size(); ++i)
    if (masks[i].dim() != 1 || masks[i].size(0) != groups_[i].channels)
      fail("mask {} ({} of layer {}) has {} entries, expected [{}]", i, groups_[i].kind, groups_[i].layer,
           masks[i].numel(), groups_[i].channels);
  *masks_ = std::move(masks);
}

}  // namespace toga
