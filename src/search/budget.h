// What a set of masks costs, as the search and the final model count it: bytes of the block linears'
// weight codes relative to their FP16 bytes (kept parameters × bits / 16; 50 % sparsity at W4 =
// 0.125). Scales and zero points are the same for every allocation and left out, as are embeddings,
// norms and lm_head (never pruned or searched).
#pragma once

#include <vector>

#include "search/supernet.h"

namespace toga {

// Differentiable in the masks (soft or hard): Σ_sites kept_rows · Σ_kept_cols bits / (16 · Σ rows·cols),
// float64 scalar. A precision mask's channel costs high bits, others low bits; without precision
// groups every kept weight costs 16 bits.
torch::Tensor compressed_fraction(const std::vector<MaskGroup>& groups, const std::vector<torch::Tensor>& masks,
                                  const SupernetQuantizers& q);
// Kept parameters / all parameters of the block linears (1 − sparsity), float64 scalar.
torch::Tensor kept_fraction(const std::vector<MaskGroup>& groups, const std::vector<torch::Tensor>& masks);
// Average bits per kept weight: 16 · compressed / kept (TOGA-q's unit).
torch::Tensor weight_bits(const std::vector<MaskGroup>& groups, const std::vector<torch::Tensor>& masks,
                          const SupernetQuantizers& q);

// Hard masks from logits (on where logit > 0; a pruning group keeps at least its largest), then
// adjusted to `budget` (compressed fraction): while over it, the lowest-logit "on" entries are turned
// off (a pruning group never empties); then the highest-logit "off" entries are turned on while they
// fit. Each flip's cost is exact given the others, so budget − (one channel's cost) < realized ≤ budget
// when there is anything left to add. Precision masks in order space, pruning masks in source numbering.
std::vector<torch::Tensor> meet_budget(const std::vector<torch::Tensor>& logits, const std::vector<MaskGroup>& groups,
                                       const SupernetQuantizers& q, double budget);

// The smallest and largest compressed fraction the groups allow (everything pruned down to one
// channel per pruning group at low bits; nothing pruned, everything at high bits). A budget outside
// is an "impossible budget" error.
std::pair<double, double> budget_range(const std::vector<MaskGroup>& groups, const SupernetQuantizers& q);
void check_budget(double budget, const std::vector<MaskGroup>& groups, const SupernetQuantizers& q);

}  // namespace toga
