// GPTQ (Frantar et al., IST-DASLab/gptq) with Atom/TOGA mixed-precision partitions: the last
// k_salient input columns (the salient channels after reordering) use `high`, the rest `low`, and
// every column, 1-bit ones included, is quantized in one error-compensating pass.
//
// SparseGPT (Frantar & Alistarh) is the same pass with a pruning step: at the start of every block
// of columns, the `sparsity` fraction of the block's weights with the lowest w² / [H⁻¹]_jj² (their
// OBS saliency, on the error-updated weights) are set to zero, and their error is compensated like a
// quantization error; the kept weights are quantized in the same pass (SparseGPT's joint mode).
#pragma once

#include <torch/torch.h>

#include <functional>
#include <vector>

#include "quant/quantizer.h"

namespace toga {

struct GptqOptions {
  QuantSpec low;              // columns [0, in - k_salient)
  QuantSpec high;             // columns [in - k_salient, in)
  int64_t k_salient = 0;
  int64_t block_size = 128;   // lazy-batch width; the result does not depend on it (up to rounding)
  double damp = 0.01;         // fraction of mean(diag H) added to the diagonal
  bool act_order = false;     // low columns by descending diag(H); salient columns stay last, in order
  // SparseGPT: unstructured fraction of each block's weights set to zero (0 = plain GPTQ). The mask
  // depends on block_size, as in SparseGPT.
  double sparsity = 0;
  // SparseGPT's n:m pattern instead (e.g. 2:4): in every m consecutive columns of a row the n of
  // lowest saliency are pruned, chosen when the pass reaches the first of them. 0 = off.
  int prune_n = 0, prune_m = 0;
  // A fixed mask instead (bool [out, in], W's column order; OBR's Wanda mask): weights where it is
  // false are quantized as 0 and their error propagates like any other.
  torch::Tensor keep;
  // SliM-LLM's per-group widths: the columns split in groups of low.group_size, group g quantized
  // at group_bits[g] bits (low's other settings; 1 bit = binarization). Needs k_salient = 0.
  std::vector<int> group_bits;
  // Fits a group's scale and zero on its columns as the pass reaches them ([rows, group width]);
  // empty = find_params (SliM-LLM's range search and OBR's dense-fitted grid plug in here).
  std::function<GroupParams(const torch::Tensor& columns, const QuantSpec& spec)> fit;
};

struct GptqResult {
  // Columns in processing order: column j is original column perm[j]; groups are contiguous in
  // this order (exllama style), so dequantize(weight) == Q.index_select(1, perm).
  QuantizedWeight weight;
  torch::Tensor perm;  // int64 [in]; the identity without act_order
  // GPTQ's loss: sum over columns of (w - q)^2 / (2 [H^-1]_jj) along the downdated inverse, which
  // equals 1/2 tr((W - Q) H_damped (W - Q)^T) for the dead-column-zeroed W.
  double loss = 0;
};

// W [out, in]; H [in, in] = (2/N) sum x x^T from the caller. Each quantization group's scale and
// zero are fitted when the pass reaches its first column, on the columns as updated by the errors
// of every earlier column (for a per-row partition that is the whole partition: the salient part is
// fitted after the low part's error has been propagated into it, as in Atom). Float32 updates
// (float64 for a float64 W); the Cholesky factor of H^-1 is always computed in float64.
GptqResult gptq_quantize(const torch::Tensor& w, const torch::Tensor& h, const GptqOptions& options);

// U, the upper Cholesky factor of H⁻¹ (float64), for a damped Hessian: row j is row j of the
// inverse restricted to the columns from j on, over √ of its diagonal (GPTQ and its relatives).
torch::Tensor inverse_hessian_factor(const torch::Tensor& h_damped, double damp);

}  // namespace toga
