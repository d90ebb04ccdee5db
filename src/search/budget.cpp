#include "search/budget.h"

#include <algorithm>
#include <map>
#include <tuple>

#include "util/error.h"

namespace toga {

using torch::Tensor;

namespace {

void check_masks(const std::vector<MaskGroup>& groups, const std::vector<Tensor>& masks) {
  if (masks.size() != groups.size()) fail("{} masks for {} mask groups", masks.size(), groups.size());
}

// Kept rows and Σ over kept columns of bits (or of 1 when `count_only`), per site, differentiable.
Tensor site_sum(const SiteMasks& s, const std::vector<MaskGroup>& groups, const std::vector<Tensor>& masks,
                const SupernetQuantizers& q, bool count_only) {
  // The hypernetwork's masks live on the CPU; the budget is a float64 scalar there.
  const auto f64 = [](const Tensor& t) { return t.to(torch::kFloat64).cpu(); };
  const Tensor rows = s.out >= 0 ? f64(masks[s.out]).sum() : torch::full({}, double(s.rows), torch::kFloat64);
  Tensor cols;
  if (s.in >= 0) {
    cols = f64(masks[s.in]);
    if (s.quant >= 0) cols = cols.index_select(0, groups[s.quant].order.cpu());  // into order space
  }
  Tensor per_col;
  if (count_only || s.quant < 0) {
    const double bits = count_only ? 1.0 : 16.0;
    per_col = cols.defined() ? cols * bits : torch::full({s.cols}, bits, torch::kFloat64);
  } else {
    const double lb = q.weight_low.bits, hb = q.weight_high.bits;
    per_col = lb + (hb - lb) * f64(masks[s.quant]);
    if (cols.defined()) per_col = per_col * cols;
  }
  return rows * per_col.sum();
}

}  // namespace

Tensor compressed_fraction(const std::vector<MaskGroup>& groups, const std::vector<Tensor>& masks, const SupernetQuantizers& q) {
  check_masks(groups, masks);
  const auto sites = site_masks(groups);
  Tensor bits = torch::zeros({}, torch::kFloat64);
  for (const auto& s : sites) bits = bits + site_sum(s, groups, masks, q, false);
  return bits / (16.0 * linear_weights(sites));
}

Tensor kept_fraction(const std::vector<MaskGroup>& groups, const std::vector<Tensor>& masks) {
  check_masks(groups, masks);
  const auto sites = site_masks(groups);
  Tensor kept = torch::zeros({}, torch::kFloat64);
  for (const auto& s : sites) kept = kept + site_sum(s, groups, masks, {}, true);
  return kept / linear_weights(sites);
}

Tensor weight_bits(const std::vector<MaskGroup>& groups, const std::vector<Tensor>& masks, const SupernetQuantizers& q) {
  return 16.0 * compressed_fraction(groups, masks, q) / kept_fraction(groups, masks);
}

std::pair<double, double> budget_range(const std::vector<MaskGroup>& groups, const SupernetQuantizers& q) {
  const auto sites = site_masks(groups);
  double least = 0, most = 0;
  for (const auto& s : sites) {
    const double rows = s.out >= 0 ? 1.0 : double(s.rows), cols = s.in >= 0 ? 1.0 : double(s.cols);
    least += rows * cols * (s.quant >= 0 ? q.weight_low.bits : 16.0);
    most += double(s.rows) * double(s.cols) * (s.quant >= 0 ? q.weight_high.bits : 16.0);
  }
  const double capacity = 16.0 * linear_weights(sites);
  return {least / capacity, most / capacity};
}

void check_budget(double budget, const std::vector<MaskGroup>& groups, const SupernetQuantizers& q) {
  const auto [lo, hi] = budget_range(groups, q);
  if (!(budget >= lo && budget <= hi))
    fail("impossible budget: {:.4g} of the FP16 size is outside what these masks can reach, [{:.4g}, {:.4g}]", budget, lo, hi);
}

namespace {

// Exact running cost of hard masks, updated one flip at a time: the total code bits of all sites,
// with each flip's change computed from the other masks as they are.
class BudgetCounter {
 public:
  BudgetCounter(const std::vector<MaskGroup>& groups, const SupernetQuantizers& q, std::vector<std::vector<char>>& on)
      : groups_(groups), on_(on), sites_(site_masks(groups)), lb_(q.weight_low.bits), hb_(q.weight_high.bits) {
    readers_.resize(groups.size());
    writers_.resize(groups.size());
    for (size_t s = 0; s < sites_.size(); ++s) {
      if (sites_[s].quant >= 0) readers_[sites_[s].quant].push_back(s);
      if (sites_[s].in >= 0) readers_[sites_[s].in].push_back(s);
      if (sites_[s].out >= 0) writers_[sites_[s].out].push_back(s);
    }
    position_.resize(groups.size());
    for (size_t g = 0; g < groups.size(); ++g)
      if (!groups[g].prune) {
        const Tensor order = groups[g].order.cpu().contiguous();
        position_[g].resize(groups[g].channels);
        for (int64_t j = 0; j < order.numel(); ++j) position_[g][order.data_ptr<int64_t>()[j]] = j;
        order_.push_back(std::vector<int64_t>(order.data_ptr<int64_t>(), order.data_ptr<int64_t>() + order.numel()));
      } else {
        order_.emplace_back();
      }
    rows_.assign(sites_.size(), 0);
    colterm_.assign(sites_.size(), 0);
    for (size_t s = 0; s < sites_.size(); ++s) {
      const SiteMasks& c = sites_[s];
      if (c.out >= 0) for (char k : on_[c.out]) rows_[s] += k;
      else rows_[s] = double(c.rows);
      for (int64_t src = 0; src < c.cols; ++src) colterm_[s] += column_bits(c, src);
      total_ += rows_[s] * colterm_[s];
    }
    capacity_ = 16.0 * linear_weights(sites_);
  }

  double fraction() const { return total_ / capacity_; }
  double bits_total() const { return total_; }
  double capacity() const { return capacity_; }

  // Change of the total if entry (g, j) flipped.
  double delta(size_t g, int64_t j) const {
    const double sign = on_[g][j] ? -1.0 : 1.0;
    double d = 0;
    if (!groups_[g].prune) {
      const int64_t src = order_[g][j];
      for (size_t s : readers_[g]) d += rows_[s] * sign * (hb_ - lb_) * kept_column(sites_[s], src);
    } else {
      for (size_t s : readers_[g]) d += rows_[s] * sign * bits_of(sites_[s], j);
      for (size_t s : writers_[g]) d += sign * colterm_[s];
    }
    return d;
  }

  void flip(size_t g, int64_t j) {
    const double sign = on_[g][j] ? -1.0 : 1.0;
    if (!groups_[g].prune) {
      const int64_t src = order_[g][j];
      for (size_t s : readers_[g]) {
        const double dc = sign * (hb_ - lb_) * kept_column(sites_[s], src);
        colterm_[s] += dc;
        total_ += rows_[s] * dc;
      }
    } else {
      for (size_t s : readers_[g]) {
        const double dc = sign * bits_of(sites_[s], j);
        colterm_[s] += dc;
        total_ += rows_[s] * dc;
      }
      for (size_t s : writers_[g]) {
        rows_[s] += sign;
        total_ += sign * colterm_[s];
      }
    }
    on_[g][j] = !on_[g][j];
  }

 private:
  // Bits of source column `src` of a site if it is kept (its precision), ignoring its own pruning.
  double bits_of(const SiteMasks& c, int64_t src) const {
    if (c.quant < 0) return 16.0;
    return on_[c.quant][position_[c.quant][src]] ? hb_ : lb_;
  }
  double kept_column(const SiteMasks& c, int64_t src) const { return c.in >= 0 ? double(on_[c.in][src]) : 1.0; }
  double column_bits(const SiteMasks& c, int64_t src) const { return kept_column(c, src) * bits_of(c, src); }

  const std::vector<MaskGroup>& groups_;
  std::vector<std::vector<char>>& on_;
  std::vector<SiteMasks> sites_;
  double lb_, hb_;
  std::vector<std::vector<size_t>> readers_, writers_;
  std::vector<std::vector<int64_t>> position_, order_;
  std::vector<double> rows_, colterm_;
  double total_ = 0, capacity_ = 0;
};

}  // namespace

std::vector<Tensor> meet_budget(const std::vector<Tensor>& logits, const std::vector<MaskGroup>& groups,
                                const SupernetQuantizers& q, double budget) {
  check_masks(groups, logits);
  check_budget(budget, groups, q);
  std::vector<std::vector<char>> on(groups.size());
  std::vector<std::tuple<float, size_t, int64_t>> entries;  // (logit, group, channel)
  std::vector<int64_t> kept(groups.size(), 0);
  for (size_t g = 0; g < groups.size(); ++g) {
    const Tensor l = logits[g].detach().to(torch::kFloat32).cpu().contiguous();
    if (l.numel() != groups[g].channels) fail("logits {} have {} entries, group has {}", g, l.numel(), groups[g].channels);
    const float* p = l.data_ptr<float>();
    on[g].resize(l.numel());
    for (int64_t j = 0; j < l.numel(); ++j) {
      on[g][j] = p[j] > 0;
      kept[g] += on[g][j];
      entries.emplace_back(p[j], g, j);
    }
    if (groups[g].prune && kept[g] == 0) {
      on[g][l.argmax().item<int64_t>()] = 1;
      kept[g] = 1;
    }
  }
  BudgetCounter counter(groups, q, on);
  const double limit = budget * counter.capacity() * (1 + 1e-12);
  std::sort(entries.begin(), entries.end());
  for (const auto& [l, g, j] : entries) {
    if (counter.bits_total() <= limit) break;
    if (!on[g][j] || (groups[g].prune && kept[g] == 1)) continue;
    counter.flip(g, j);
    if (groups[g].prune) --kept[g];
  }
  for (auto it = entries.rbegin(); it != entries.rend(); ++it) {
    const auto& [l, g, j] = *it;
    if (on[g][j]) continue;
    if (counter.bits_total() + counter.delta(g, j) <= limit) {
      counter.flip(g, j);
      if (groups[g].prune) ++kept[g];
    }
  }
  std::vector<Tensor> masks;
  for (size_t g = 0; g < groups.size(); ++g) {
    Tensor m = torch::zeros({groups[g].channels});
    float* p = m.data_ptr<float>();
    for (int64_t j = 0; j < groups[g].channels; ++j) p[j] = on[g][j] ? 1.0f : 0.0f;
    masks.push_back(m);
  }
  return masks;
}

}  // namespace toga
