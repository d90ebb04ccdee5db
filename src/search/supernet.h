// The search's supernet: the frozen model with binary masks a hypernetwork chooses.
//
// Two kinds of mask, one MaskGroup each (docs/SEARCH.md maps them to sites):
// - precision (TOGA-q): over the input channels of the sites that read one input (q/k/v; o; gate/up;
//   down), in Atom's mean-|x| order; each site computes Q_h(W)·M + Q_l(W)·(1−M) and, in
//   weight-activation mode, the same for its input. One mask per input: a salient channel is salient
//   for every reader, as one INT8 activation partition serves them all.
// - pruning (DISP-LLM, TOGA joint): per block P1 (residual channels q/k/v read), P2 (residual channels
//   o_proj writes), P3 (channels gate/up read), P4 (MLP intermediate channels), P5 (channels down_proj
//   writes), in source numbering. A reader's input and its weight columns are masked before the
//   quantizers see them (prune, then quantize what is left); a writer's output rows are masked.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model.h"
#include "model/structure.h"
#include "quant/quantizer.h"

namespace toga {

struct MaskGroup {
  int layer = 0;
  bool prune = false;              // a pruning mask (true) or a precision mask (false)
  // precision: "attn_in" (q/k/v), "o_in", "mlp_in" (gate/up), "down_in";
  // pruning: "P1_attn_in", "P2_attn_out", "P3_mlp_in", "P4_mlp_inner", "P5_mlp_out"
  std::string kind;
  std::vector<std::string> sites;  // sites reading these channels (input columns)
  std::vector<int64_t> site_rows;  // their output rows
  std::vector<std::string> writers;  // pruning: sites writing these channels (output rows)
  std::vector<int64_t> writer_cols;  // their input columns
  int64_t channels = 0;
  int64_t weight_rows = 0;         // total output rows of the readers: a channel's weight cost
  // int64 [channels], ascending importance: precision groups by mean |x| of the input (Atom's
  // order); pruning groups by the readers' mean |x| or, for P2/P5, a writer row's expected |output|.
  torch::Tensor order;
};

// One block linear and the masks over it, as the groups say: its precision group (input columns,
// order space), the pruning group over its input columns and the one over its output rows (−1: none).
// The one mapping from groups to sites: the supernet attaches by it, the budget counts by it.
struct SiteMasks {
  std::string name;
  int64_t rows = 0, cols = 0;
  int quant = -1, in = -1, out = -1;
};
std::vector<SiteMasks> site_masks(const std::vector<MaskGroup>& groups);
// Σ rows·cols of the sites: the weights of the block linears the groups cover.
double linear_weights(const std::vector<SiteMasks>& sites);

// Precision groups of every block in layer order (attn_in, o_in, mlp_in, down_in), orders undefined.
std::vector<MaskGroup> quant_mask_groups(const Model& model);
// Pruning groups of every block in layer order (P1..P5), orders undefined.
std::vector<MaskGroup> prune_mask_groups(const Model& model);

// Every group's order from the model's activations on `windows` ([n, T] ids).
void compute_channel_orders(Model& model, std::vector<MaskGroup>& groups, const torch::Tensor& windows);

struct SupernetQuantizers {
  QuantSpec weight_low{4, true, 0}, weight_high{8, true, 0};
  QuantSpec act_low{16}, act_high{16};  // bits 16 = weight-only
};

// Starting masks: precision groups keep the last round(salient_fraction·n) channels of their order
// salient (Atom's fixed fraction), pruning groups keep the last round(keep_fraction·n) (at least one).
// {0, 1} float, precision masks in order space, pruning masks in source numbering.
std::vector<torch::Tensor> prior_masks(const std::vector<MaskGroup>& groups, double salient_fraction,
                                       double keep_fraction = 1.0);
// prior_masks for precision groups only (TOGA-q): Atom's fixed fraction.
std::vector<torch::Tensor> fixed_fraction_masks(const std::vector<MaskGroup>& groups, double fraction);

// Attaches the supernet: precision groups' sites read their input in the group's order and quantize
// with the current masks; pruning masks multiply readers' inputs and writers' outputs (set_masks
// before each forward). Weights stay frozen; the masks receive gradients (Q_h − Q_l through
// straight-through rounding; the masked activations for pruning). Detach with
// model.clear_attachments() and reload the weights: the columns stay in order space.
class Supernet {
 public:
  Supernet(Model& model, std::vector<MaskGroup> groups, SupernetQuantizers q);
  // One tensor per group: precision masks in order space, pruning masks in source numbering.
  void set_masks(std::vector<torch::Tensor> masks);
  const std::vector<MaskGroup>& groups() const { return groups_; }
  const SupernetQuantizers& quantizers() const { return q_; }

 private:
  struct Pruned {  // a site's pruning masks: group indices (−1 none)
    LinearSite* site;
    int in = -1, out = -1;
  };
  std::vector<MaskGroup> groups_;
  SupernetQuantizers q_;
  std::shared_ptr<std::vector<torch::Tensor>> masks_;
  std::vector<Pruned> pruned_;
};

// {site: {"salient": [source channels]}} for every site of every precision group, channels a pruning
// mask removes left out: what plan_from_masks reads.
nlohmann::json salient_sets_json(const std::vector<torch::Tensor>& masks, const std::vector<MaskGroup>& groups);

// The kept channels of every block with a pruning group, from hard masks: what prune_block and a
// Plan's `blocks` take.
std::map<int, BlockPruning> block_pruning_from_masks(const std::vector<torch::Tensor>& masks,
                                                     const std::vector<MaskGroup>& groups);

}  // namespace toga
