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

StatisticsCollector::StatisticsCollector(const std::vector<LinearSite*>& sites, bool with_hessian, int64_t sample_stride)
    : StatisticsCollector(singletons(sites), with_hessian, sample_stride) {}

StatisticsCollector::StatisticsCollector(std::vector<std::vector<LinearSite*>> groups, bool with_hessian,
                                         int64_t sample_stride)
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
    handles_.push_back(first->add_observer([stats, hess, sample_stride](const LinearSite& site, const torch::Tensor& x) {
      torch::NoGradGuard ng;
      const auto x2 = x.detach().reshape({-1, x.size(-1)}).to(torch::kFloat32);
      auto& st = (*stats)[site.name];
      if (!st.abs_sum.defined()) {
        st.abs_sum = torch::zeros({x2.size(1)}, x2.options().dtype(torch::kFloat64));
        st.abs_max = torch::zeros({x2.size(1)}, x2.options().dtype(torch::kFloat64));
        if (hess) st.xtx = torch::zeros({x2.size(1), x2.size(1)}, x2.options().dtype(torch::kFloat64));
      }
      st.abs_sum += x2.abs().sum(0).to(torch::kFloat64);
      st.abs_max = torch::maximum(st.abs_max, x2.abs().amax(0).to(torch::kFloat64));
      if (hess) st.xtx += torch::matmul(x2.t(), x2).to(torch::kFloat64);
      if (sample_stride > 0) {
        // Rows rows, rows + stride, ... of the whole stream, whatever the batch boundaries.
        const int64_t first_row = (sample_stride - st.rows % sample_stride) % sample_stride;
        if (first_row < x2.size(0)) {
          const auto picked = x2.slice(0, first_row, x2.size(0), sample_stride).clone();
          st.samples = st.samples.defined() ? torch::cat({st.samples, picked}) : picked;
        }
      }
      st.rows += x2.size(0);
    }));
  }
}

StatisticsCollector::~StatisticsCollector() = default;

void StatisticsCollector::detach() { handles_.clear(); }

const SiteStatistics& StatisticsCollector::at(const std::string& site) const {
  auto a = alias_.find(site);
  auto it = a == alias_.end() ? stats_->end() : stats_->find(a->second);
  if (it == stats_->end()) fail("no calibration statistics for site '{}' (was it reached?)", site);
  return it->second;
}

std::unique_ptr<StatisticsCollector> BlockCalibration::observe(const std::vector<std::vector<LinearSite*>>& groups,
                                                               bool with_hessian, int64_t sample_stride) {
  auto stats = std::make_unique<StatisticsCollector>(groups, with_hessian, sample_stride);
  // Ends each window's pass once every observed site has seen its input: the rest of the block
  // would be computed for nothing.
  std::vector<ObserverHandle> stops;
  auto seen = std::make_shared<size_t>(0);
  size_t n = 0;
  for (const auto& g : groups) n += g.empty() ? 0 : 1;
  for (const auto& g : groups)
    if (!g.empty())
      stops.push_back(g.front()->add_observer([seen, n](const LinearSite&, const torch::Tensor&) {
        if (++*seen == n) {
          *seen = 0;
          throw StopForward{};
        }
      }));
  torch::NoGradGuard no_grad;
  for (const auto& h : hidden_) {
    try {
      model_.block_forward(layer_, h, 0);
    } catch (const StopForward&) {
    }
  }
  stats->detach();
  return stats;
}

void for_each_block_calibrated(Model& model, const torch::Tensor& windows,
                               const std::function<void(BlockCalibration&)>& visit, const LayerShard& shard) {
  if (!windows.defined() || windows.dim() != 2) fail("calibration needs [n, seqlen] token windows");
  const int end = shard.end_of(model);
  if (shard.begin < 0 || shard.begin > end || end > int(model.blocks.size()))
    fail("layer shard [{}, {}) is not a range of the model's {} blocks", shard.begin, end, model.blocks.size());
  if ((shard.begin > 0 && !shard.receive) || (end < int(model.blocks.size()) && !shard.send))
    fail("layer shard [{}, {}) of {} blocks needs its neighbours' hidden states", shard.begin, end, model.blocks.size());
  torch::NoGradGuard no_grad;
  const int64_t per_batch = std::max<int64_t>(1, 8192 / windows.size(1));
  std::vector<torch::Tensor> hidden;
  for (int64_t i = 0; i < windows.size(0); i += per_batch) {
    const auto ids = windows.narrow(0, i, std::min(per_batch, windows.size(0) - i));
    hidden.push_back(shard.begin == 0 ? model.embed_tokens(ids)
                                      : torch::empty({ids.size(0), ids.size(1), model.config.hidden_size},
                                                     torch::TensorOptions().dtype(model.dtype()).device(model.device())));
  }
  if (shard.begin > 0) shard.receive(hidden);
  for (int l = shard.begin; l < end; ++l) {
    BlockCalibration calib(model, l, hidden);
    visit(calib);
    for (auto& h : hidden) h = model.block_forward(l, h, 0);
  }
  if (end < int(model.blocks.size())) shard.send(hidden);
}

}  // namespace toga
