// SliM-LLM, GPTQ variant (../shared/docs/BASELINES.md §4): per-group mixed bit widths around a
// target b. Column groups are ranked by their Hessian salience Σ W²/d² (d = the diagonal of the
// Cholesky factor of H⁻¹); SBA gives the i least salient groups b − 1 bits and the i most salient
// b + 1, choosing i by the KL divergence between the layer's RTN-quantized and full-precision output
// distributions on calibration inputs; GPTQ then quantizes with those widths, fitting each group's
// range by SQC's search (with the released λ = 1 it is an L2.4 search of a range multiplier in
// [0.9, 1.1]).
#pragma once

#include <torch/torch.h>

#include <vector>

#include "quant/gptq.h"
#include "quant/quantizer.h"

namespace toga {

// Σ over rows and the group's columns of W² / d_j², one value per group of `group_size` columns
// (the last one may be narrower). H [in, in] as given: SliM-LLM damps it by 0.01 on the diagonal
// (absolute) before, and GPTQ's relative damping comes only later.
torch::Tensor slim_group_salience(const torch::Tensor& w, const torch::Tensor& h, int64_t group_size);

// W at per-group widths by round to nearest: per row, `base` at bits[g] on group g (1 bit:
// binarization, μ ± α when base.binary_centered).
torch::Tensor slim_rtn(const torch::Tensor& w, const std::vector<int>& bits, const QuantSpec& base);

// The mean over the rows of x of KL(softmax(x Ŵᵀ) ‖ softmax(x Wᵀ)) over the output dimension.
double output_kl(const torch::Tensor& x, const torch::Tensor& w_quantized, const torch::Tensor& w);

struct SlimAllocation {
  std::vector<int> bits;      // per column group
  int64_t shifted = 0;        // i: how many groups went down (and up) a bit
  std::vector<double> scores; // KL per candidate i = 1, 2, ...
};

// SBA: groups ranked by `salience`; for i = 1 .. ⌊G/2⌋ − 1 the i least salient at b − 1 and the i
// most salient at b + 1; the i of lowest output_kl(x, slim_rtn(...), w). No candidate (G < 4): all at b.
SlimAllocation slim_allocate_bits(const torch::Tensor& w, const torch::Tensor& salience, const torch::Tensor& x,
                                  const QuantSpec& base);

// SQC's range fit of a group: per row, the multiplier p of the min–max range among 1, 1 ± 0.1·k/50
// (k = 1..50) with the lowest Σ |Q(x) − x|^2.4. Binarized groups keep their μ ± α.
GroupParams slim_range_search(const torch::Tensor& x, const QuantSpec& spec);

struct SlimLlmResult {
  GptqResult gptq;
  SlimAllocation allocation;
  double average_bits = 0;  // over the weights (groups may differ in width)
};

// W [out, in]; H [in, in] = (2/N) Σ xxᵀ; x [tokens, in] a sample of the layer's calibration inputs
// for SBA; `base` is the target (bits b, group size, symmetric or not). SliM-LLM's absolute damping
// (0.01 on the diagonal) comes first, `gptq` options' relative damping on top.
SlimLlmResult slim_llm_quantize(const torch::Tensor& w, const torch::Tensor& h, const torch::Tensor& x,
                                const QuantSpec& base, GptqOptions gptq = {});

}  // namespace toga
