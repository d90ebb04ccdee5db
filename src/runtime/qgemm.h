// Packed quantized weights and the integer GEMM of weight-activation quantized linears (W4A4, W8A8
// and Atom's mixed INT4 + INT8 salient partition): Y = Σ_blocks s_x·s_w · Σ_k (c_w − z_w)·c_x over
// the columns of each block, with the activations quantized per token on the fly. The weight-only
// product on the same layout is runtime/wgemm.h. No libtorch: this is the deployable runtime.
// `qgemm_reference` is the plain definition the kernels are tested against.
//
// Layout. The input columns are split into blocks (a weight quantization group, which for qgemm must
// also be the activations' group: Atom's 128-column groups and its salient partition), each stored
// in a 1-, 2-, 4- or 8-bit container (3-bit codes go in 4, 5..7 in 8; qgemm takes 4 and 8 only).
// Codes are stored offset-binary, u = c − code_min (code_min = −2^(bits−1), 0 for binary codes
// {0, 1}), because the VNNI dot product multiplies unsigned by signed bytes; the activation codes'
// block sums undo the offset. Rows go in panels of 16 and, inside a panel, each 64-byte line holds
// 16 rows × one 32-bit word: 32/bits consecutive columns. Column j of a word sits at bit bits·j,
// except in INT4 words, where the low nibbles of the four bytes are columns k..k+3 and the high
// nibbles k+4..k+7 (one mask and one shift split a line into two VNNI operands). A block's width is
// padded to its line with zero codes; rows to the panel.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/cpu.h"

namespace toga::rt {

struct ColumnBlock {
  int64_t begin = 0, end = 0;  // input columns [begin, end)
  int bits = 4;                // container: 1, 2, 4 or 8
};

// Columns one 32-bit word (a row's share of a 64-byte line) holds.
inline int64_t line_columns(int bits) { return 32 / bits; }
// Bit position of column j of a word.
inline int column_shift(int bits, int64_t j) { return bits == 4 ? int(j < 4 ? 8 * j : 8 * (j - 4) + 4) : int(bits * j); }
// The smallest code a container holds: binary codes are {0, 1}, others two's-complement ranges.
inline int container_code_min(int bits) { return bits == 1 ? 0 : -(1 << (bits - 1)); }
// The container a code width is stored in.
int container_bits(int bits);

struct PackedWeight {
  int64_t rows = 0, cols = 0, panels = 0;
  std::vector<ColumnBlock> blocks;
  std::vector<int64_t> padded;     // per block: width padded to its line
  std::vector<int64_t> x_offset;   // per block: first column of the block in the padded activation row
  int64_t padded_cols = 0;         // Σ padded
  int64_t panel_bytes = 0;         // bytes of one 16-row panel (all blocks)
  std::vector<int64_t> panel_offset_of_block;  // byte offset of each block inside a panel
  std::vector<uint8_t> data;       // panels × panel_bytes
  std::vector<float> scales;       // [blocks][panels·16]
  // [blocks][panels·16]: the zero point − code_min, so that value = scale·(u − zero_offset).
  std::vector<float> zero_offset;
  // The same in int32 when every zero point is an integer (integer_zeros), so that
  // Σ (c_w − z)·c_x = Σ u·c_x − code_offset·Σ c_x exactly: what qgemm needs.
  std::vector<int32_t> code_offset;
  bool integer_zeros = true;
};

// codes [rows, cols] in each block's container range, scales and zero points [rows, blocks]
// (row-major; value = scale·(code − zero); zero 0 when symmetric, any float for binarization).
PackedWeight pack_weight(const int8_t* codes, const float* scales, const float* zeros, int64_t rows, int64_t cols,
                         const std::vector<ColumnBlock>& blocks);

// The symmetric quantizers' scale factor above absmax (quant/quantizer.cpp's tie break): the runtime's
// activation and KV quantizers use it so their codes equal the fake-quant path's.
constexpr double kSymmetricTieBreak = 1.0 + 1.0 / 65536;

struct ActivationQuant {
  std::vector<double> clip;  // per block: clip ratio (1 = absmax)
};

// Activations quantized per token and block, symmetric, as the fake-quant path does it
// (quant/quantizer.h: scale = 2·clip·absmax·(1 + 2⁻¹⁶) / (2^bits − 1), c = clamp(round(x / scale))).
struct QuantizedActivations {
  int64_t tokens = 0, padded_cols = 0, blocks = 0;
  std::vector<int8_t> codes;   // [tokens][padded_cols]
  std::vector<float> scales;   // [tokens][blocks]
  std::vector<int32_t> sums;   // [tokens][blocks]: Σ codes
};

// x [tokens, cols] float in the weight's column order; or, with `gather`, x [tokens, x_width] and
// column k of the weight reads x[t][gather[k]] (the reorder and pruning index fused into the pass).
// Both kernel families compute the same codes (the scalar formula, vectorized).
void quantize_activations(const float* x, int64_t tokens, const PackedWeight& w, const ActivationQuant& q,
                          QuantizedActivations& out, Isa isa, const int32_t* gather = nullptr, int64_t x_width = 0);

// y [tokens, rows] = the quantized product (bias not included), on the given kernel family.
void qgemm(const QuantizedActivations& x, const PackedWeight& w, float* y, Isa isa);

// The definition, from unpacked codes, in float64: y[t][n] = Σ_b sx[t][b]·sw[n][b]·Σ_{k∈b} (cw[n][k] −
// zw[n][b])·cx[t][k]. Codes and scales as pack_weight and quantize_activations take and make them.
void qgemm_reference(const int8_t* x_codes, const float* x_scales, int64_t tokens, const int8_t* w_codes,
                     const float* w_scales, const float* w_zeros, int64_t rows, int64_t cols,
                     const std::vector<ColumnBlock>& blocks, double* y);

}  // namespace toga::rt
