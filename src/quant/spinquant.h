// SpinQuant (../shared/docs/BASELINES.md §2): R1 (residual stream) and one R2 per layer (value
// heads) learned with Cayley SGD on the next-token loss of the model with 4-bit activations and KV
// cache (W16A4KV4, straight-through rounding), starting from random-sign Hadamards; R4, an online
// Hadamard on the down_proj input, present in training and kept; then R1/R2 folded into the
// weights (quant/rotation.h) and GPTQ.
//
// Training rotates on the fly through the sites' hooks, with the model's weights untouched: a site
// reading the residual stream computes Q_A(x·R1)·(W·R1)ᵀ, v_proj's output becomes v·R2 per head
// (so the KV quantizer sees rotated values), o_proj computes Q_A(a·R2)·(W·R2)ᵀ per head, down_proj
// Q_A(x·H)·(W·H)ᵀ. Deviations, stated with its numbers: no online Hadamard on q/k after RoPE (R3);
// the parameters are re-orthonormalized (QR) before every Cayley step, not with probability 1/101.
#pragma once

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "model/model.h"
#include "quant/plan.h"
#include "quant/recipes.h"

namespace toga {

struct SpinQuantTraining {
  int steps = 0;      // 0: one step per window
  double lr = 1.5;    // cosine decay to 0, no warm-up (SpinQuant's)
  QuantSpec act{4, false, 0};
  QuantSpec kv{4, false, 0};
  uint64_t seed = 0;  // the starting Hadamards' signs
  std::string online_transform = "hadamard";  // R4 on the down_proj input (as the Plan applies it)
  bool progress = true;
};

struct LearnedRotations {
  torch::Tensor r1;               // [hidden, hidden] float64
  std::vector<torch::Tensor> r2;  // per layer [head_dim, head_dim] float64
  std::vector<double> losses;     // per step
};

// Learns the rotations on `windows` [n, T] (one window per step, cycling). `m` must have unit norm
// gains (fold_norm_gains) and stays as it was (hooks removed).
LearnedRotations learn_rotations(Model& m, const torch::Tensor& windows, const SpinQuantTraining& o);

// The recipe: fold, learn on the calibration windows, fold R1/R2; returns provenance.
nlohmann::json spinquant_prepare(Model& m, const torch::Tensor& windows, const QuantizeOptions& o);
// W4 per channel (w_clip), A4 per token, KV4, no high-precision channels, online Hadamard on down_proj.
Plan spinquant_plan(const Model& m, const QuantizeOptions& o);
QuantizeOptions spinquant_defaults();

}  // namespace toga
