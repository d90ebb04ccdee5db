// OBR (../shared/docs/BASELINES.md §5): Wanda pruning, then per row a closed-form (OBS) compensation
// of the pruning error into the kept weights and of the quantization error of the first part of
// the kept columns into the rest; the result is quantized with pruned weights held at zero (OBR-RTN,
// or GPTQ on the second part: OBR-GPTQ). The recipe (`--method obr`, quant/recipes.cpp) runs it on
// SpinQuant's rotated front end.
#pragma once

#include <torch/torch.h>

#include "quant/quantizer.h"

namespace toga {

// Wanda's mask (true = kept): score |W_ij|·√s_j, s_j = mean x_j² (the Hessian's diagonal / 2); per
// row the lowest `sparsity` fraction pruned, or with `two_four` the 2 smallest of every 4 columns.
torch::Tensor wanda_mask(const torch::Tensor& w, const torch::Tensor& s, double sparsity, bool two_four = false);

// W* = W⊙M + Δ: per row, δ_I = H_II⁻¹·H_IZ·w_Z (kept I, pruned Z); e = w′ − Q(w′) on the kept
// columns before split = round(alpha · in) (E), δ_R += H_RR⁻¹·H_RE·e_E on the kept columns after it
// (R). Q is `spec` fitted per row on the dense W. H [in, in] damped by the caller. Float64 inside.
torch::Tensor obr_compensate(const torch::Tensor& w, const torch::Tensor& h, const torch::Tensor& mask, const QuantSpec& spec,
                             double alpha = 0.5);

struct ObrOptions {
  double sparsity = 0.5;
  bool two_four = false;  // 2 of every 4 columns instead of a fraction per row
  double alpha = 0.5;     // the split of the kept columns: RTN before it, GPTQ after
  double damp = 0.01;     // fraction of mean(diag H), added once for both compensation and GPTQ
  bool gptq = true;       // OBR-GPTQ; false = OBR-RTN
  int64_t block_size = 128;
};

struct ObrResult {
  QuantizedWeight weight;  // one group per row (the dense-fitted grid); pruned weights have the code of 0
  torch::Tensor keep;      // bool [out, in]: Wanda's mask
  double loss = 0;         // 1/2 tr((W − Q) H_damped (W − Q)ᵀ)
};

// The whole OBR step for one linear: W [out, in], H [in, in] = (2/N) Σ xxᵀ (undamped; Wanda's
// statistic is its diagonal / 2), `spec` a per-channel quantizer fitted on the dense W.
ObrResult obr_quantize(const torch::Tensor& w, const torch::Tensor& h, const QuantSpec& spec, const ObrOptions& options = {});

}  // namespace toga
