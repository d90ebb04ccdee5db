// Rotations folded into a model's weights (QuaRot / SpinQuant / ResQ's front end): the model computes
// the same function, while the activations and weights its quantizers see have their outliers
// spread over many channels.
//
//  - fold_norm_gains: every RMSNorm gain moves into the linears that read the normalized stream
//    (q/k/v, gate/up, lm_head), leaving unit gains, so that a rotation commutes with the norms
//    (RMSNorm(x·R) = RMSNorm(x)·R for orthogonal R when the gain is one).
//  - untie_embedding: lm_head gets its own copy of a tied embedding (the two differ once folded).
//  - rotate_residual (R1): the residual stream h becomes h·R. Embedding rows E·R; readers
//    (q/k/v, gate/up, lm_head) W·R; writers (o_proj, down_proj) Rᵀ·W and bias b·R.
//  - rotate_values (R2, per layer): every value head v becomes v·R2 (v_proj rows R2ᵀ·W per kv head,
//    bias b·R2), and o_proj's input columns W·diag(R2, …, R2): the KV cache stores rotated values.
// Online Hadamards on the down_proj input (R4) are a Plan site transform (quant/transforms.h).
// Arithmetic in float64, weights cast back to the model's dtype. Pruned or already quantized models
// are refused: a rotation mixes every channel, which index lists and packed codes cannot follow.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "model/model.h"

namespace toga {

void fold_norm_gains(Model& m);
void untie_embedding(Model& m);
void rotate_residual(Model& m, const torch::Tensor& r);
// r2: [head_dim, head_dim] for every kv head, or [kv_heads, head_dim, head_dim], one per kv head
// (query heads use their group's).
void rotate_values(Model& m, int layer, const torch::Tensor& r2);

// One step of SpinQuant's Cayley SGD (momentum 0; BASELINES.md §2) on an orthogonal parameter X
// [n, n] with Euclidean gradient G: the update moves along the manifold of orthogonal matrices,
// Y = (I − a/2·W)⁻¹(I + a/2·W)·Xᵀ for the skew W = Ŵ − Ŵᵀ, Ŵ = V·X − ½·Xᵀ(X·V·X), V = −Gᵀ, with the
// inverse by 5 fixed-point iterations and the step a = min(lr, 1 / (‖W‖₁ + 1e-8)). The rows of X are
// normalized first, and, with `reorthonormalize`, X is replaced by the sign-corrected Q of its QR
// (SpinQuant does this with probability 1/101). Float64 inside; returns Yᵀ in X's dtype.
torch::Tensor cayley_sgd_step(const torch::Tensor& x, const torch::Tensor& g, double lr, bool reorthonormalize = false);

struct RotationOptions {
  std::string kind = "hadamard";  // "hadamard" (random-sign, quant/hadamard.h) | "rotation" (random orthogonal)
  uint64_t seed = 1;
  bool values = true;  // also R2 per layer (head_dim wide)
};

// fold, untie, R1 over the hidden width and (with `values`) R2 per layer, seeded per layer: the
// rotated starting point every rotation method shares. Returns what was done (provenance).
nlohmann::json rotate_model(Model& m, const RotationOptions& o);

}  // namespace toga
