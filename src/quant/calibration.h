// Calibration: random token windows from a text, and per-site statistics gathered by observers on
// the model's linear sites: mean |x| per input channel (for Atom-style reordering) and the GPTQ
// Hessian H = (2/N) sum x x^T, both accumulated in float64 (a sum of per-batch float32 products).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"

namespace toga {

// n windows of `seqlen` tokens with uniformly random starts (GPTQ's sampling), from a seeded
// generator, so the same seed gives the same windows. [n, seqlen] int64.
torch::Tensor sample_calibration_windows(const std::vector<int>& tokens, int n, int seqlen, uint64_t seed);

struct SiteStatistics {
  torch::Tensor abs_sum;  // [in] float64, sum of |x| per channel
  torch::Tensor xtx;      // [in, in] float64, sum of x x^T (undefined when not requested)
  int64_t rows = 0;       // tokens seen

  torch::Tensor mean_abs() const;  // [in] float64
  torch::Tensor hessian() const;   // (2/N) sum x x^T in float64, as GPTQ defines it
};

// Attaches observers to sites and accumulates their statistics until detached. Sites that read the
// same input (q/k/v, gate/up) are given as one group: observed once, their statistics shared.
class StatisticsCollector {
 public:
  StatisticsCollector(std::vector<std::vector<LinearSite*>> shared_input_groups, bool with_hessian);
  // Every site its own group.
  StatisticsCollector(const std::vector<LinearSite*>& sites, bool with_hessian);
  ~StatisticsCollector();  // detaches
  StatisticsCollector(const StatisticsCollector&) = delete;
  StatisticsCollector& operator=(const StatisticsCollector&) = delete;

  const SiteStatistics& at(const std::string& site) const;
  void detach();

 private:
  std::vector<LinearSite*> observed_;  // the first site of each group carries the observer
  std::shared_ptr<std::map<std::string, SiteStatistics>> stats_;
  std::map<std::string, std::string> alias_;  // site -> the observed site of its group
  bool with_hessian_;
  bool attached_ = false;
};

// Thrown by an observer to end a forward pass early once the inputs it needs are seen.
struct StopForward {};

}  // namespace toga
