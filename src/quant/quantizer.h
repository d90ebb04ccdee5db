// Weight and activation quantizers as pure tensor functions (RTN, grouped, mixed precision,
// binarization), the column-partitioned QuantizedWeight the checkpoint and runtime store, and
// straight-through fake quantization for searches that train through the rounding.
//
// Conventions (one for weights, activations and the KV cache):
// - Groups run along the LAST dimension: per row (output channel) of a weight [out, in], per token
//   of an activation [..., in], per head of a KV tensor [B, H, T, D] when group_size = D.
//   group_size = 0 means one group over the whole last dimension; a ragged tail group is allowed.
// - Codes are signed: every b-bit uniform quantizer (2 <= b <= 8) stores codes in
//   [-2^(b-1), 2^(b-1)-1], which fits int8 for b = 8 asymmetric too, and value = scale*(code - zero).
//   * Symmetric follows GPTQ's quant.py (also Atom's GPTQ): scale = 2*clip*max|x| / (2^b - 1), zero = 0,
//     widened by 2^-16 so that -max|x|, which sits exactly on a rounding tie, rounds to -(2^(b-1)-1)
//     in every dtype and on every device. Unclipped, the grid is then odd (q(-x) = -q(x)), uses
//     2^b - 1 levels and has error <= scale/2 at the ends; -2^(b-1) is reached by clipped values
//     and by GPTQ's error-updated weights. (Atom's and QuaRot's activation quantizer use the coarser
//     scale = max|x|/(2^(b-1)-1) instead; toga uses the GPTQ grid everywhere so weights and
//     activations agree.) Unlike quant.py, a row with no negative values still uses max|x|.
//   * Asymmetric: the range [min(x,0), max(x,0)] (0 always representable, as in GPTQ and QuaRot),
//     scale = clip*(max - min)/(2^b - 1), zero = round(-clip*min/scale) - 2^(b-1).
// - bits == 1 is binarization: sign(x - mu)*alpha + mu with alpha = mean|x - mu| over the group and
//   mu = the group mean when binary_centered (BiLLM, PTQ1.61), else mu = 0 (sign(x)*mean|x|).
//   Stored as codes {0,1}, scale = 2*alpha, zero = 0.5 - mu/(2*alpha).
// - bits >= 16 means "not quantized": fake quantization is the identity.
// - Computation is float32 (float64 when the input is float64), on the input's device.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace toga {

struct QuantSpec {
  int bits = 16;
  bool symmetric = true;
  int group_size = 0;  // 0 = one group per row (weights) / per token (activations)
  double clip_ratio = 1.0;
  bool mse_clip = false;  // GPTQ's w_clip search: range shrink p = clip*(1 - i/100), i < 80, min sum |q-x|^2.4
  bool binary_centered = false;

  bool quantized() const { return bits < 16; }
};

// Throws toga::Error unless bits is 1..8 or >= 16, group_size >= 0 and 0 < clip_ratio <= 1.
void validate(const QuantSpec& spec);

// Smallest and largest stored code of a quantized spec ({0,1} for binarization).
int code_min(const QuantSpec& spec);
int code_max(const QuantSpec& spec);

// Columns [col_begin, col_end) sharing one scale/zero per row — or, for a codebook group, one table
// of 2^bits values per row that the codes (0 .. 2^bits − 1) index (BiLLM's binarized groups, whose
// levels μ ± α of two interleaved sets are not evenly spaced).
struct ColumnGroup {
  int64_t col_begin = 0;
  int64_t col_end = 0;
  int bits = 16;
  bool symmetric = true;  // binarization: true when not centered (zero = 0.5)
  bool codebook = false;
};

struct QuantizedWeight {
  torch::Tensor codes;   // int8 [out, in]
  torch::Tensor scales;  // [out, n_groups], the compute dtype: f32 (f64 for a float64 input)
  torch::Tensor zeros;   // [out, n_groups], same dtype; value = scale*(code - zero)
  std::vector<ColumnGroup> groups;  // in column order, covering [0, in)
  // [out, Σ 2^bits over the codebook groups, in group order]: their tables (value = levels[row,
  // offset of the group + code]); undefined without codebook groups. Their scales and zeros are
  // unused (1 and 0) and not stored.
  torch::Tensor levels;
  // [in], the scales' dtype: a factor per stored column on top of the row's grid (PTQ1.61's learned
  // column scale r₂); undefined = 1.
  torch::Tensor column_scales;

  bool has_codebook() const;
};

// Per-group parameters of the groups along x's last dimension; shaped like x with last dim 1.
struct GroupParams {
  torch::Tensor scale;
  torch::Tensor zero;
};

// Fits one group per slice along the last dimension of x (the GPTQ Quantizer's find_params).
// `weight` (optional, broadcastable to x, values in [0,1]) restricts the statistics to the weighted
// entries: max|x*w| for the range, w-weighted means for binarization, w-weighted clip error.
GroupParams find_params(const torch::Tensor& x, const QuantSpec& spec, const torch::Tensor& weight = {});
// Integer-valued codes (in x's float dtype) of x under params p.
torch::Tensor quantize_codes(const torch::Tensor& x, const GroupParams& p, const QuantSpec& spec);

// The column groups of a row of `in` columns whose last k are quantized with `high` and the rest
// with `low`, each partition split by its own group_size starting at the partition's first column.
std::vector<ColumnGroup> column_groups(int64_t in, int64_t k_salient, const QuantSpec& low,
                                       const QuantSpec& high);

// Fake quantization (dequantized values, straight-through gradient: d out / d x = identity).
torch::Tensor fake_quantize(const torch::Tensor& x, const QuantSpec& spec);
// Atom/TOGA mixed precision after channel reordering: the last k input channels (salient) use
// `high`, the others `low`. Weight [out, in]; activation [..., in], dynamic per token.
torch::Tensor fake_quantize_weight(const torch::Tensor& w, const QuantSpec& low, const QuantSpec& high,
                                   int64_t k_salient);
torch::Tensor fake_quantize_activation(const torch::Tensor& x, const QuantSpec& low, const QuantSpec& high,
                                       int64_t k_salient);
// Q_h(x)*M + Q_l(x)*(1-M) for a {0,1} or soft mask over the last dimension (shape [in] or
// broadcastable to x). Q_h's statistics are taken over x weighted by M and Q_l's over x weighted by
// 1-M, so a hard mask equal to "last k" reproduces fake_quantize_activation when the low groups
// align with the partition; the gradient reaches x (identity) and the mask (Q_h(x) - Q_l(x)).
torch::Tensor fake_quantize_masked(const torch::Tensor& x, const torch::Tensor& mask, const QuantSpec& low,
                                   const QuantSpec& high);

// Round-to-nearest into the stored representation. Both partitions must be quantized (bits <= 8)
// unless empty.
QuantizedWeight quantize_weight(const torch::Tensor& w, const QuantSpec& spec);
QuantizedWeight quantize_weight_mixed(const torch::Tensor& w, int64_t k_salient, const QuantSpec& low,
                                      const QuantSpec& high);
// [out, in] values in the scales' dtype; bit-identical to the matching fake_quantize_* result.
torch::Tensor dequantize(const QuantizedWeight& qw);

}  // namespace toga
