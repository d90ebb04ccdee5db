// ResQ (../shared/docs/BASELINES.md §1): the model rotated into PCA bases of its calibration
// activations so that the top-variance 1/8 of every subspace sits last and is kept at 8 bits, the
// rest at 4, with random rotations inside each subspace and an online Hadamard on the down_proj
// input; then mixed-precision GPTQ.
//
//   C_A = Σ_layers (XᵀX at q_proj's input + XᵀX at up_proj's input), one basis for all layers;
//   C_V per layer and kv head from v_proj's outputs; damped by 1 % of mean(diag), float64 eigh,
//   eigenvalues ascending (top variance last).
//   R1 = U_A·diag(R(n−k), R(k)), R2(l, g) = U_V·diag(R(hd−k_v), R(k_v)), R random orthogonal (seeded),
//   folded into the weights (quant/rotation.h) after the norm gains.
// Deviations, stated where results are reported: keys are not rotated online after RoPE (the K
// cache is quantized in the model's own basis), the KV cache is uniform (ResQ keeps 8 of every 64
// dims at 8 bits), the o_proj input's 8-bit part is one per-token partition of the heads' last 8
// dims (ResQ: per-head groups), and the PCA uses the --calib windows (ResQ: 512 × 2048).
#pragma once

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "model/model.h"
#include "quant/plan.h"
#include "quant/recipes.h"

namespace toga {

struct ResqBases {
  torch::Tensor residual;            // [hidden, hidden] float64, eigenvector columns, ascending variance
  std::vector<torch::Tensor> values; // per layer [kv_heads, head_dim, head_dim]
};

// The second-moment PCA bases of the (norm-folded) model on `windows` [n, T].
ResqBases resq_bases(Model& m, const torch::Tensor& windows, double damp = 0.01);

// Folds the rotations into `m` (gains, R1, R2); returns what was done (provenance).
nlohmann::json resq_prepare(Model& m, const torch::Tensor& windows, const QuantizeOptions& o);

// The quantization part: q/k/v/gate/up keep their last round(f·hidden) channels at high precision,
// o_proj the last round(f·head_dim) dims of every head, down_proj an online random-sign Hadamard at
// low precision only. f = o.salient_fraction (ResQ: 1/8).
Plan resq_plan(const Model& m, const QuantizeOptions& o);
QuantizeOptions resq_defaults();

}  // namespace toga
