// BiLLM (../shared/docs/BASELINES.md §3): 1-bit weights by blocks of 128 columns. In each block a
// few salient columns (by the Hessian salience S = W² / [H⁻¹]_jj²) are binarized twice (the residual
// of the first binarization binarized again); the other weights are split at a break point of |S|
// into a concentrated and a sparse group, each binarized once with its own per-row mean and scale;
// the block's error is then propagated to the later columns through H⁻¹ (between blocks only).
#pragma once

#include <torch/torch.h>

#include "quant/quantizer.h"

namespace toga {

// Per row, over the entries where `mask` is true: μ = mean, α = mean |x − μ|, x ≈ μ + α·sign(x − μ);
// order 2 binarizes the residual once more and adds it. Entries outside the mask are 0.
torch::Tensor binarize_rows(const torch::Tensor& x, const torch::Tensor& mask, int order);

struct BillmOptions {
  int64_t block_size = 128;
  double damp = 0.01;
  int64_t salient_candidates = 50;  // the top columns tried as salient (k = 1 .. candidates − 1)
};

struct BillmResult {
  torch::Tensor weight;        // the binarized W (dequantized), W's dtype
  torch::Tensor salient;       // bool [in]: the columns binarized twice
  torch::Tensor sparse;        // bool [out, in]: the non-salient weights above their block's break point
  double loss = 0;             // 1/2 tr((W − Q) H_damped (W − Q)ᵀ) for the dead-column-zeroed W
  // What a checkpoint stores: per block of columns, the non-salient columns then the salient ones
  // (`perm`: stored column j is W's column perm[j]), each a 2-bit codebook group (quant/quantizer.h);
  // dequantize(stored) is `weight` with its columns in `perm` order.
  QuantizedWeight stored;
  torch::Tensor perm;
  // Average bits per weight, three ways (BASELINES.md §3b): as the paper counts (1 + the salient
  // columns' second bit), with the one-bit concentrated/sparse flag of every non-salient weight, and
  // with every stored parameter too (per row and block: μ and α of each of the salient orders and
  // the two groups, 8 fp16 values).
  double bits_paper = 0, bits_with_flags = 0, bits_total = 0;
};

// W [out, in]; H [in, in] = (2/N) Σ x xᵀ.
BillmResult billm_quantize(const torch::Tensor& w, const torch::Tensor& h, const BillmOptions& options = {});

}  // namespace toga
