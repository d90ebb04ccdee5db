// Orthogonal input transforms a Plan can ask for at a site (QuaRot/SpinQuant/ResQ-style rotations,
// applied online): the site computes (x·R)·(W·R)ᵀ = x·Wᵀ, and quantizes x·R and W·R, whose
// outliers are spread over many channels. R is block-diagonal over the salient partition — one
// block for the low channels, one for the salient ones (ResQ rotates inside each subspace) — so
// the partition keeps its meaning. R is regenerated from (kind, sizes, seed) wherever it is needed
// (apply, load); checkpoints store only those.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

namespace toga {

// "hadamard": H_n / √n (quant/hadamard.h: Sylvester's for a power of two, Paley ⊗ Sylvester for
// the other widths it can build), with random ±1 column signs when seed ≠ 0.
// "rotation": a random orthogonal matrix, the Q of a seeded Gaussian matrix's QR (signs fixed so
// that R's diagonal is positive), float64 then rounded to float32.
torch::Tensor orthogonal_transform(const std::string& kind, int64_t n, uint64_t seed);
// The same matrix before the rounding to float32 (rotations folded into weights: quant/rotation.h).
torch::Tensor orthogonal_transform_f64(const std::string& kind, int64_t n, uint64_t seed);

// Block-diagonal [in, in]: orthogonal_transform over the first in − k_salient channels, and over
// the last k_salient (seed + 1). Float32; _f64 before the rounding.
torch::Tensor partitioned_transform(const std::string& kind, int64_t in, int64_t k_salient, uint64_t seed);
torch::Tensor partitioned_transform_f64(const std::string& kind, int64_t in, int64_t k_salient, uint64_t seed);

// The Q of x's QR with signs fixed so that R's diagonal is positive: the orthogonal matrix nearest
// to a nearly orthogonal x (float64).
torch::Tensor orthonormalized(const torch::Tensor& x);

bool is_known_transform(const std::string& kind);

}  // namespace toga
