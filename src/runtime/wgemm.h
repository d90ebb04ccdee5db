// The weight-only product on the packed layout of runtime/qgemm.h (W4A16, W8A16, W3A16, binary
// weights with INT4 salient columns: every container): y = x · Ŵᵀ with the activations kept in
// float32 and each weight dequantized in registers, ŵ = s·(u − zero_offset). Decode (one token) is
// bound by streaming the codes; prefill reuses each dequantized weight vector for a tile of tokens.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/qgemm.h"

namespace toga::rt {

// x [tokens, cols] float32 in the weight's column order; y [tokens, rows] (bias not included).
void wgemm(const float* x, int64_t tokens, const PackedWeight& w, float* y, Isa isa);

// The definition in float64, from unpacked codes: y[t][n] = Σ_b s[n][b]·Σ_{k∈b} (c[n][k] − z[n][b])·x[t][k].
void wgemm_reference(const float* x, int64_t tokens, const int8_t* w_codes, const float* w_scales, const float* w_zeros,
                     int64_t rows, int64_t cols, const std::vector<ColumnBlock>& blocks, double* y);

}  // namespace toga::rt
