// TOGA-q's supernet: the frozen model with every block linear computing, on its input channels in
// Atom's mean-|x| order, Q_h(W)·M + Q_l(W)·(1−M) (and the same for its input in weight-activation
// mode) for a mask M the search chooses. Sites that read one input (q/k/v; gate/up) share one mask:
// the channel is salient for all of them, as one INT8 activation partition serves them all.
#pragma once

#include <string>
#include <vector>

#include "model/model.h"
#include "quant/quantizer.h"

namespace toga {

// One mask of the search: the input of one or more sites of one block.
struct MaskGroup {
  int layer = 0;
  std::string kind;                // "attn_in" (q/k/v), "o_in", "mlp_in" (gate/up), "down_in"
  std::vector<std::string> sites;  // the sites reading it
  int64_t channels = 0;            // input width
  int64_t weight_rows = 0;         // total output rows of its sites: a channel's weight cost
  torch::Tensor order;             // int64 [channels]: source channels in ascending mean |x|
};

// The mask groups of every block, in layer order, orders undefined.
std::vector<MaskGroup> quant_mask_groups(const Model& model);

// Atom's channel order for every group from the model's activations on `windows` ([n, T] ids).
void compute_channel_orders(Model& model, std::vector<MaskGroup>& groups, const torch::Tensor& windows);

struct SupernetQuantizers {
  QuantSpec weight_low{4, true, 0}, weight_high{8, true, 0};
  QuantSpec act_low{16}, act_high{16};  // bits 16 = weight-only
};

// Masks a salient fraction would give in each group: the last round(fraction·n) channels of the
// order (Atom's fixed-fraction choice), as {0, 1} float tensors in order space.
std::vector<torch::Tensor> fixed_fraction_masks(const std::vector<MaskGroup>& groups, double fraction);

// Average weight bits over all block linears (size-weighted) for masks in order space, soft or hard:
// differentiable in the masks. Codes only: scales are the same for every allocation.
torch::Tensor weight_bits(const std::vector<MaskGroup>& groups, const std::vector<torch::Tensor>& masks,
                          const SupernetQuantizers& q);

// Attaches the supernet: each group's sites read their input in the group's order and quantize with
// the current masks (set_masks before each forward). Weights stay frozen; the masks receive
// gradients Q_h − Q_l through straight-through rounding. Detach with model.clear_attachments()
// (and reload the weights: the columns stay in order space).
class Supernet {
 public:
  Supernet(Model& model, std::vector<MaskGroup> groups, SupernetQuantizers q);
  void set_masks(std::vector<torch::Tensor> masks);  // one [channels] tensor per group, order space
  const std::vector<MaskGroup>& groups() const { return groups_; }
  const SupernetQuantizers& quantizers() const { return q_; }

 private:
  std::vector<MaskGroup> groups_;
  SupernetQuantizers q_;
  std::shared_ptr<std::vector<torch::Tensor>> masks_;
};

}  // namespace toga
