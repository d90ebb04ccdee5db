// Calibration: random token windows from a text, and per-site statistics gathered by observers on
// the model's linear sites: mean |x| per input channel (for Atom-style reordering) and the GPTQ
// Hessian H = (2/N) sum x x^T, both accumulated in float64 (a sum of per-batch float32 products).
#pragma once

#include <map>
#include <functional>
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
  torch::Tensor abs_max;  // [in] float64, max |x| per channel (PTQ1.61's salience)
  torch::Tensor xtx;      // [in, in] float64, sum of x x^T (undefined when not requested)
  // [k, in] float32: every `sample_stride`-th input row, for methods that score a layer's outputs
  // (SliM-LLM's KL); undefined when not requested.
  torch::Tensor samples;
  int64_t rows = 0;       // tokens seen

  torch::Tensor mean_abs() const;  // [in] float64
  torch::Tensor hessian() const;   // (2/N) sum x x^T in float64, as GPTQ defines it
};

// Attaches observers to sites and accumulates their statistics until detached. Sites that read the
// same input (q/k/v, gate/up) are given as one group: observed once, their statistics shared.
class StatisticsCollector {
 public:
  StatisticsCollector(std::vector<std::vector<LinearSite*>> shared_input_groups, bool with_hessian,
                      int64_t sample_stride = 0);
  // Every site its own group.
  StatisticsCollector(const std::vector<LinearSite*>& sites, bool with_hessian, int64_t sample_stride = 0);
  ~StatisticsCollector();  // detaches
  StatisticsCollector(const StatisticsCollector&) = delete;
  StatisticsCollector& operator=(const StatisticsCollector&) = delete;

  const SiteStatistics& at(const std::string& site) const;
  void detach();

 private:
  std::vector<ObserverHandle> handles_;  // the first site of each group carries the observer
  std::shared_ptr<std::map<std::string, SiteStatistics>> stats_;
  std::map<std::string, std::string> alias_;  // site -> the observed site of its group
  bool with_hessian_;
};

// The calibrated block-by-block loop every method shares (GPTQ, Atom reordering, DISP-LLM
// statistics, SparseGPT, OBR, the search's initialisation): the windows go through the model one
// block at a time; for each block, `visit` may observe the block's inputs as the block is now and
// change the block; then the windows move on through the changed block, so each block is
// calibrated on what the already-compressed blocks before it produce.
class BlockCalibration {
 public:
  BlockCalibration(const Model& model, int layer, std::vector<torch::Tensor>& hidden)
      : model_(model), layer_(layer), hidden_(hidden) {}
  int layer() const { return layer_; }
  // Runs the windows through the block until every site of `groups` has seen its input, and
  // returns their statistics (sites of one group share one input: observed once).
  std::unique_ptr<StatisticsCollector> observe(const std::vector<std::vector<LinearSite*>>& groups, bool with_hessian,
                                               int64_t sample_stride = 0);
  // The block's input hidden states, batch by batch [b, T, hidden].
  const std::vector<torch::Tensor>& inputs() const { return hidden_; }

 private:
  const Model& model_;
  int layer_;
  std::vector<torch::Tensor>& hidden_;
};

// Layer-sharded calibration (dist/layer_shards.h): this process holds blocks [begin, end) and
// visits only those; unless it starts at block 0, the windows' hidden states arrive from the
// previous process (`receive` fills tensors of the right shapes), and unless it ends at the last
// block, they leave for the next one (`send`) once its blocks are done. The default is every block.
struct LayerShard {
  int begin = 0, end = -1;  // end < 0: to the last block
  std::function<void(std::vector<torch::Tensor>&)> receive;
  std::function<void(const std::vector<torch::Tensor>&)> send;

  int end_of(const Model& m) const { return end < 0 ? int(m.blocks.size()) : end; }
  bool whole(const Model& m) const { return begin == 0 && end_of(m) == int(m.blocks.size()); }
};

// windows: [n, seqlen] token ids. Batches of whole windows (~8k tokens each) bound the memory.
void for_each_block_calibrated(Model& model, const torch::Tensor& windows,
                               const std::function<void(BlockCalibration&)>& visit, const LayerShard& shard = {});

}  // namespace toga
