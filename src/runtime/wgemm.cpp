#include "runtime/wgemm.h"

#include <cstring>

#include "util/error.h"

namespace toga::rt {

// The AVX-512 kernel (wgemm_avx512.cpp).
void wgemm_avx512(const float* x, int64_t tokens, const PackedWeight& w, float* y);

namespace {

constexpr int64_t kPanel = 16;

// The portable kernel: each word of the packed layout unpacked field by field.
void wgemm_scalar(const float* x, int64_t tokens, const PackedWeight& w, float* y) {
  const int64_t nb = int64_t(w.blocks.size()), prow = w.panels * kPanel;
#pragma omp parallel for schedule(static)
  for (int64_t panel = 0; panel < w.panels; ++panel) {
    for (int64_t t = 0; t < tokens; ++t) {
      const float* row = x + t * w.cols;
      float out[kPanel] = {};
      for (int64_t bi = 0; bi < nb; ++bi) {
        const ColumnBlock& b = w.blocks[size_t(bi)];
        const int64_t line = line_columns(b.bits);
        const uint32_t mask = (1u << b.bits) - 1;
        const uint8_t* data = w.data.data() + panel * w.panel_bytes + w.panel_offset_of_block[size_t(bi)];
        for (int64_t r = 0; r < kPanel; ++r) {
          const float s = w.scales[size_t(bi * prow + panel * kPanel + r)];
          const float zo = w.zero_offset[size_t(bi * prow + panel * kPanel + r)];
          float acc = 0;
          for (int64_t j = 0; j < b.end - b.begin; ++j) {
            uint32_t word;
            std::memcpy(&word, data + (j / line) * 64 + r * 4, 4);
            const float u = float((word >> column_shift(b.bits, j % line)) & mask);
            acc += (u - zo) * s * row[b.begin + j];
          }
          out[r] += acc;
        }
      }
      for (int64_t r = 0; r < kPanel && panel * kPanel + r < w.rows; ++r) y[t * w.rows + panel * kPanel + r] = out[r];
    }
  }
}

}  // namespace

void wgemm(const float* x, int64_t tokens, const PackedWeight& w, float* y, Isa isa) {
  switch (isa) {
    case Isa::kScalar: return wgemm_scalar(x, tokens, w, y);
    case Isa::kAvx512Vnni: return wgemm_avx512(x, tokens, w, y);
  }
}

void wgemm_reference(const float* x, int64_t tokens, const int8_t* w_codes, const float* w_scales, const float* w_zeros,
                     int64_t rows, int64_t cols, const std::vector<ColumnBlock>& blocks, double* y) {
  const int64_t nb = int64_t(blocks.size());
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t n = 0; n < rows; ++n) {
      double total = 0;
      for (int64_t bi = 0; bi < nb; ++bi) {
        double dot = 0;
        for (int64_t k = blocks[size_t(bi)].begin; k < blocks[size_t(bi)].end; ++k)
          dot += (double(w_codes[n * cols + k]) - double(w_zeros[n * nb + bi])) * double(x[t * cols + k]);
        total += dot * double(w_scales[n * nb + bi]);
      }
      y[t * rows + n] = total;
    }
}

}  // namespace toga::rt
