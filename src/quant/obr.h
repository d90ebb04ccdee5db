// OBR (../shared/docs/BASELINES.md §5): Wanda pruning, then per row a closed-form (OBS) compensation
// of the pruning error into the kept weights and of the quantization error of the first part of
// the kept columns into the rest; the result is quantized with pruned weights held at zero (OBR-RTN,
// or GPTQ on the second part: OBR-GPTQ). Algorithm only so far: the recipe is not wired yet.
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

}  // namespace toga
