#include "search/supernet.h"

#include <algorithm>
#include <cmath>

#include "quant/apply_plan.h"
#include "quant/calibration.h"
#include "util/error.h"

namespace toga {

using torch::Tensor;

namespace {

void require_plain(const LinearSite& s) {
  if (s.in_index.defined() || s.out_index.defined())
    fail("site '{}' already reads or writes a subset or permutation of its channels: search a plain model", s.name);
}

std::vector<int64_t> to_vector(const Tensor& t) {
  const Tensor c = t.to(torch::kLong).cpu().contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

}  // namespace

std::vector<SiteMasks> site_masks(const std::vector<MaskGroup>& groups) {
  std::vector<SiteMasks> sites;
  std::map<std::string, size_t> index;
  auto at = [&](const std::string& name) -> SiteMasks& {
    auto [it, added] = index.emplace(name, sites.size());
    if (added) sites.push_back(SiteMasks{name});
    return sites[it->second];
  };
  for (size_t i = 0; i < groups.size(); ++i) {
    const MaskGroup& g = groups[i];
    for (size_t k = 0; k < g.sites.size(); ++k) {
      SiteMasks& s = at(g.sites[k]);
      s.rows = g.site_rows.at(k);
      s.cols = g.channels;
      (g.prune ? s.in : s.quant) = int(i);
    }
    for (size_t k = 0; k < g.writers.size(); ++k) {
      SiteMasks& s = at(g.writers[k]);
      s.rows = g.channels;
      s.cols = g.writer_cols.at(k);
      s.out = int(i);
    }
  }
  return sites;
}

double linear_weights(const std::vector<SiteMasks>& sites) {
  double n = 0;
  for (const auto& s : sites) n += double(s.rows) * double(s.cols);
  return n;
}

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
        require_plain(*s);
        m.sites.push_back(s->name);
        m.site_rows.push_back(s->out_features());
        m.weight_rows += s->out_features();
      }
      groups.push_back(std::move(m));
    }
  }
  return groups;
}

std::vector<MaskGroup> prune_mask_groups(const Model& model) {
  std::vector<MaskGroup> groups;
  for (int l = 0; l < static_cast<int>(model.blocks.size()); ++l) {
    const Block& b = model.blocks[l];
    for (const LinearSite* s : b.sites()) require_plain(*s);
    auto group = [&](const char* kind, int64_t channels, std::vector<const LinearSite*> readers,
                     std::vector<const LinearSite*> writers) {
      MaskGroup m;
      m.layer = l;
      m.prune = true;
      m.kind = kind;
      m.channels = channels;
      for (const LinearSite* s : readers) {
        m.sites.push_back(s->name);
        m.site_rows.push_back(s->out_features());
        m.weight_rows += s->out_features();
      }
      for (const LinearSite* s : writers) {
        m.writers.push_back(s->name);
        m.writer_cols.push_back(s->in_features());
      }
      groups.push_back(std::move(m));
    };
    const int64_t hidden = model.config.hidden_size;
    group("P1_attn_in", hidden, {&b.q, &b.k, &b.v}, {});
    group("P2_attn_out", hidden, {}, {&b.o});
    group("P3_mlp_in", hidden, {&b.gate, &b.up}, {});
    group("P4_mlp_inner", b.down.in_features(), {&b.down}, {&b.gate, &b.up});
    group("P5_mlp_out", hidden, {}, {&b.down});
  }
  return groups;
}

void compute_channel_orders(Model& model, std::vector<MaskGroup>& groups, const torch::Tensor& windows) {
  // Statistics of every input of every block a group touches (one observation per shared input).
  std::vector<std::vector<LinearSite*>> shared;
  std::vector<bool> seen(model.blocks.size(), false);
  for (const MaskGroup& g : groups) seen[g.layer] = true;
  for (size_t l = 0; l < model.blocks.size(); ++l)
    if (seen[l])
      for (auto& sites : model.blocks[l].input_groups()) shared.push_back(sites);
  StatisticsCollector stats(shared, false);
  {
    torch::NoGradGuard no_grad;
    const int64_t per_batch = std::max<int64_t>(1, 8192 / std::max<int64_t>(1, windows.size(1)));
    for (int64_t b = 0; b < windows.size(0); b += per_batch)
      model.forward(windows.narrow(0, b, std::min(per_batch, windows.size(0) - b)));
  }
  for (MaskGroup& g : groups) {
    if (!g.sites.empty()) {
      g.order = salience_order(stats.at(g.sites.front()).mean_abs());
    } else {
      // A written channel's importance: its expected |output|, Σ_j |W_ij|·mean|x_j| over the writer.
      const LinearSite& w = model.site(g.writers.front());
      const Tensor mean_abs = stats.at(w.name).mean_abs().to(torch::kFloat64);
      g.order = salience_order(torch::mv(w.weight.detach().to(torch::kFloat64).abs().cpu(), mean_abs.cpu()));
    }
  }
}

std::vector<Tensor> prior_masks(const std::vector<MaskGroup>& groups, double salient_fraction, double keep_fraction) {
  std::vector<Tensor> masks;
  for (const MaskGroup& g : groups) {
    if (!g.order.defined()) fail("mask group {} of layer {} has no channel order (compute_channel_orders)", g.kind, g.layer);
    const double f = g.prune ? keep_fraction : salient_fraction;
    int64_t k = std::llround(f * double(g.channels));
    if (g.prune) k = std::max<int64_t>(1, k);
    Tensor m = torch::zeros({g.channels});
    if (k > 0) {
      const Tensor last = torch::ones({k});
      if (g.prune) m.index_put_({g.order.narrow(0, g.channels - k, k)}, last);  // source numbering
      else m.narrow(0, g.channels - k, k).copy_(last);                             // order space
    }
    masks.push_back(m);
  }
  return masks;
}

std::vector<Tensor> fixed_fraction_masks(const std::vector<MaskGroup>& groups, double fraction) {
  return prior_masks(groups, fraction, 1.0);
}

Supernet::Supernet(Model& model, std::vector<MaskGroup> groups, SupernetQuantizers q)
    : groups_(std::move(groups)), q_(q), masks_(std::make_shared<std::vector<Tensor>>(groups_.size())) {
  std::map<std::string, int> pruned_input;  // site → the pruning group over its input columns
  for (const SiteMasks& m : site_masks(groups_)) {
    if (m.in >= 0) pruned_input[m.name] = m.in;
    if (m.in >= 0 || m.out >= 0) pruned_.push_back({&model.site(m.name), m.in, m.out});
  }
  for (size_t i = 0; i < groups_.size(); ++i) {
    const MaskGroup& g = groups_[i];
    if (g.prune) continue;
    if (!g.order.defined()) fail("mask group {} of layer {} has no channel order (compute_channel_orders)", g.kind, g.layer);
    for (const auto& name : g.sites) {
      LinearSite& s = model.site(name);
      const Tensor order = g.order.to(s.weight.device());
      s.weight = s.weight.index_select(1, order).detach();
      s.in_index = order;
      const auto masks = masks_;
      const SupernetQuantizers qs = q_;
      const int pruned_by = pruned_input.count(name) ? pruned_input.at(name) : -1;
      // Pruned columns are zero before the quantizers see them, so scales come from what is kept
      // (the detached mask: the gradient reaches it through the masked input instead).
      s.custom_weight = [masks, i, qs, pruned_by, order](const Tensor& w) {
        const Tensor kept = pruned_by < 0 ? w : w * (*masks)[pruned_by].detach().to(w.device()).index_select(0, order).to(w.scalar_type());
        return fake_quantize_masked(kept, (*masks)[i], qs.weight_low, qs.weight_high).to(w.scalar_type());
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
  for (const Pruned& p : pruned_) {
    LinearSite& s = *p.site;
    const auto dev = s.weight.device();
    const auto dtype = s.weight.scalar_type();
    if (p.in >= 0) {
      const Tensor m = (*masks_)[p.in].to(dev);
      s.in_mask = (s.in_index.defined() ? m.index_select(0, s.in_index) : m).to(dtype);
    }
    if (p.out >= 0) s.out_mask = (*masks_)[p.out].to(dev).to(dtype);
  }
}

nlohmann::json salient_sets_json(const std::vector<Tensor>& masks, const std::vector<MaskGroup>& groups) {
  std::map<std::string, int> pruned_input;
  for (const SiteMasks& m : site_masks(groups))
    if (m.in >= 0) pruned_input[m.name] = m.in;
  nlohmann::json out = nlohmann::json::object();
  for (size_t i = 0; i < groups.size(); ++i) {
    if (groups[i].prune) continue;
    const MaskGroup& g = groups[i];
    Tensor salient = torch::zeros({g.channels}, torch::kBool);
    salient.index_put_({g.order.cpu()}, masks[i].cpu() > 0.5);  // order space → source numbering
    const auto pruned = pruned_input.find(g.sites.front());
    if (pruned != pruned_input.end()) salient = salient & (masks[pruned->second].cpu() > 0.5);
    const auto channels = to_vector(torch::nonzero(salient).flatten());
    for (const auto& site : g.sites) out[site] = {{"salient", channels}};
  }
  return out;
}

std::map<int, BlockPruning> block_pruning_from_masks(const std::vector<Tensor>& masks, const std::vector<MaskGroup>& groups) {
  std::map<int, BlockPruning> blocks;
  for (size_t i = 0; i < groups.size(); ++i) {
    if (!groups[i].prune) continue;
    const Tensor kept = torch::nonzero(masks[i].cpu() > 0.5).flatten().to(torch::kLong);
    if (kept.numel() == 0) fail("pruning mask {} of layer {} keeps nothing", groups[i].kind, groups[i].layer);
    BlockPruning& p = blocks[groups[i].layer];
    const std::string& k = groups[i].kind;
    if (k == "P1_attn_in") p.attn_in = kept;
    else if (k == "P2_attn_out") p.attn_out = kept;
    else if (k == "P3_mlp_in") p.mlp_in = kept;
    else if (k == "P4_mlp_inner") p.mlp_inner = kept;
    else if (k == "P5_mlp_out") p.mlp_out = kept;
    else fail("unknown pruning group kind '{}'", k);
  }
  return blocks;
}

}  // namespace toga
