#include "quant/calibration.h"

#include <random>

#include "util/error.h"

namespace toga {

torch::Tensor sample_calibration_windows(const std::vector<int>& tokens, int n, int seqlen, uint64_t seed) {
  if (n <= 0 || seqlen <= 0) fail("calibration needs positive window count and length (got {} x {})", n, seqlen);
  if (tokens.size() <= static_cast<size_t>(seqlen))
    fail("calibration text has {} tokens: too few for windows of {}", tokens.size(), seqlen);
  std::mt19937_64 rng(seed);
  const uint64_t starts = tokens.size() - seqlen;  // start in [0, starts)
  auto out = torch::empty({n, seqlen}, torch::kLong);
  auto* p = out.data_ptr<int64_t>();
  for (int i = 0; i < n; ++i) {
    const uint64_t s = rng() % starts;
    for (int t = 0; t < seqlen; ++t) p[int64_t(i) * seqlen + t] = tokens[s + t];
  }
  return out;
}

torch::Tensor SiteStatistics::mean_abs() const { return abs_sum / double(std::max<int64_t>(rows, 1)); }

torch::Tensor SiteStatistics::hessian() const {
  if (!xtx.defined()) fail("Hessian was not collected for this site");
  return xtx * (2.0 / double(std::max<int64_t>(rows, 1)));
}

static std::vector<std::vector<LinearSite*>> singletons(const std::vector<LinearSite*>& sites) {
  std::vector<std::vector<LinearSite*>> groups;
  for (auto* s : sites) groups.push_back({s});
  return groups;
}

StatisticsCollector::StatisticsCollector(const std::vector<LinearSite*>& sites, bool with_hessian)
    : StatisticsCollector(singletons(sites), with_hessian) {}

StatisticsCollector::StatisticsCollector(std::vector<std::vector<LinearSite*>> groups, bool with_hessian)
    : stats_(std::make_shared<std::map<std::string, SiteStatistics>>()), with_hessian_(with_hessian) {
  auto stats = stats_;
  const bool hess = with_hessian_;
  for (const auto& group : groups) {
    if (group.empty()) continue;
    LinearSite* first = group.front();
    for (auto* s : group) {
      if (s->in_features() != first->in_features())
        fail("sites '{}' and '{}' cannot share an input: widths differ", s->name, first->name);
      alias_[s->name] = first->name;
    }
    observed_.push_back(first);
    first->observers.push_back([stats, hess](const LinearSite& site, const torch::Tensor& x) {
      torch::NoGradGuard ng;
      const auto x2 = x.detach().reshape({-1, x.size(-1)}).to(torch::kFloat32);
      auto& st = (*stats)[site.name];
      if (!st.abs_sum.defined()) {
        st.abs_sum = torch::zeros({x2.size(1)}, x2.options().dtype(torch::kFloat64));
        if (hess) st.xtx = torch::zeros({x2.size(1), x2.size(1)}, x2.options().dtype(torch::kFloat64));
      }
      st.abs_sum += x2.abs().sum(0).to(torch::kFloat64);
      if (hess) st.xtx += torch::matmul(x2.t(), x2).to(torch::kFloat64);
      st.rows += x2.size(0);
    });
  }
  attached_ = true;
}

StatisticsCollector::~StatisticsCollector() { detach(); }

void StatisticsCollector::detach() {
  if (!attached_) return;
  // Our observer is the last one each observed site received.
  for (auto* s : observed_)
    if (!s->observers.empty()) s->observers.pop_back();
  attached_ = false;
}

const SiteStatistics& StatisticsCollector::at(const std::string& site) const {
  auto a = alias_.find(site);
  auto it = a == alias_.end() ? stats_->end() : stats_->find(a->second);
  if (it == stats_->end()) fail("no calibration statistics for site '{}' (was it reached?)", site);
  return it->second;
}

}  // namespace toga
