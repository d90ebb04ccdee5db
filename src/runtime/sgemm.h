// The float32 product of unquantized linears in the runtime (an FP model's layers, lm_head): the
// weight is stored in 16-row panels, column-major inside a panel (16 rows' weights of one column
// contiguous), so the kernel is the weight-only one without the dequantization — one 64-byte load
// per column, multiplied into a tile of up to 16 tokens.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/cpu.h"

namespace toga::rt {

struct DenseWeight {
  int64_t rows = 0, cols = 0, panels = 0;
  std::vector<float> data;  // [panels][cols][16], rows padded with zeros
};

// w [rows, cols] row-major.
DenseWeight pack_dense(const float* w, int64_t rows, int64_t cols);

// y [tokens, rows] = x [tokens, cols] · Wᵀ.
void sgemm(const float* x, int64_t tokens, const DenseWeight& w, float* y, Isa isa);

// The definition in float64 from the row-major weight.
void sgemm_reference(const float* x, int64_t tokens, const float* w, int64_t rows, int64_t cols, double* y);

}  // namespace toga::rt
