#include "runtime/qgemm.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "util/error.h"

namespace toga::rt {

namespace {

constexpr int64_t kPanel = 16;

void check_integer_layout(const PackedWeight& w) {
  for (const ColumnBlock& b : w.blocks)
    if (b.bits != 4 && b.bits != 8) fail("the integer GEMM takes 4- and 8-bit blocks, the weight has a {}-bit one", b.bits);
  if (!w.integer_zeros) fail("the integer GEMM needs integer zero points");
}

}  // namespace

int container_bits(int bits) {
  if (bits < 1 || bits > 8) fail("no packed container for {}-bit codes", bits);
  return bits <= 2 ? bits : bits <= 4 ? 4 : 8;
}

// The AVX-512 VNNI kernel and activation quantizer (qgemm_avx512.cpp).
void qgemm_avx512vnni(const QuantizedActivations& x, const PackedWeight& w, float* y);
void quantize_block_avx512(const float* row, const int32_t* gather, int64_t begin, int64_t end, int64_t padded,
                           float clip_factor, int bits, int8_t* codes, float& scale_out, int32_t& sum_out);

PackedWeight pack_weight(const int8_t* codes, const float* scales, const float* zeros, int64_t rows, int64_t cols,
                         const std::vector<ColumnBlock>& blocks) {
  PackedWeight p;
  p.rows = rows;
  p.cols = cols;
  p.blocks = blocks;
  p.panels = (rows + kPanel - 1) / kPanel;
  int64_t expect = 0;
  for (const auto& b : blocks) {
    if (b.begin != expect || b.end <= b.begin || b.end > cols) fail("column blocks must tile [0, {}) in order", cols);
    if (b.bits != 1 && b.bits != 2 && b.bits != 4 && b.bits != 8)
      fail("packed blocks are stored in 1-, 2-, 4- or 8-bit containers, got {}", b.bits);
    expect = b.end;
    const int64_t line = line_columns(b.bits);
    const int64_t padded = (b.end - b.begin + line - 1) / line * line;
    p.x_offset.push_back(p.padded_cols);
    p.padded.push_back(padded);
    p.panel_offset_of_block.push_back(p.panel_bytes);
    p.padded_cols += padded;
    p.panel_bytes += padded / line * 64;
  }
  if (expect != cols) fail("column blocks cover [0, {}) of {} columns", expect, cols);
  const int64_t nb = int64_t(blocks.size()), prow = p.panels * kPanel;
  p.data.assign(size_t(p.panels * p.panel_bytes), 0);
  p.scales.assign(size_t(nb * prow), 0.0f);
  p.zero_offset.assign(size_t(nb * prow), 0.0f);
  p.code_offset.assign(size_t(nb * prow), 0);
  for (int64_t bi = 0; bi < nb; ++bi) {
    const ColumnBlock& b = blocks[size_t(bi)];
    const int lo = container_code_min(b.bits), hi = lo + (1 << b.bits) - 1, offset = -lo;
    const int64_t line = line_columns(b.bits);
    for (int64_t n = 0; n < prow; ++n) {
      p.zero_offset[size_t(bi * prow + n)] = float(offset);
      p.code_offset[size_t(bi * prow + n)] = offset;
      if (n < rows) {
        const float z = zeros[n * nb + bi], s = scales[n * nb + bi];
        if (!std::isfinite(z) || !std::isfinite(s)) fail("row {} has a non-finite scale or zero point", n);
        p.scales[size_t(bi * prow + n)] = s;
        p.zero_offset[size_t(bi * prow + n)] = float(offset) + z;
        if (z == std::nearbyint(z) && std::fabs(z) <= 256) p.code_offset[size_t(bi * prow + n)] = offset + int32_t(z);
        else p.integer_zeros = false;
      }
      uint8_t* panel = p.data.data() + (n / kPanel) * p.panel_bytes + p.panel_offset_of_block[size_t(bi)];
      for (int64_t j = 0; j < p.padded[size_t(bi)]; ++j) {
        const int64_t k = b.begin + j;
        int c = 0;
        if (n < rows && k < b.end) {
          c = codes[n * cols + k];
          if (c < lo || c > hi) fail("weight code {} at ({}, {}) is outside the {}-bit range", c, n, k, b.bits);
        }
        const uint32_t u = uint32_t(c + offset);
        const int64_t step = j / line;
        uint8_t* word_at = panel + step * 64 + (n % kPanel) * 4;
        uint32_t word;
        std::memcpy(&word, word_at, 4);
        word |= u << column_shift(b.bits, j % line);
        std::memcpy(word_at, &word, 4);
      }
    }
  }
  return p;
}

void quantize_activations(const float* x, int64_t tokens, const PackedWeight& w, const ActivationQuant& q,
                          QuantizedActivations& out, Isa isa, const int32_t* gather, int64_t x_width) {
  check_integer_layout(w);
  if (!gather) x_width = w.cols;
  const int64_t nb = int64_t(w.blocks.size());
  if (int64_t(q.clip.size()) != nb) fail("{} activation clip ratios for {} column blocks", q.clip.size(), nb);
  out.tokens = tokens;
  out.padded_cols = w.padded_cols;
  out.blocks = nb;
  out.codes.resize(size_t(tokens * w.padded_cols));
  out.scales.resize(size_t(tokens * nb));
  out.sums.resize(size_t(tokens * nb));
#pragma omp parallel for schedule(static) if (tokens > 4)
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = x + t * x_width;
    auto at = [&](int64_t k) { return gather ? row[gather[k]] : row[k]; };
    for (int64_t bi = 0; bi < nb; ++bi) {
      const ColumnBlock& b = w.blocks[size_t(bi)];
      if (isa != Isa::kScalar) {
        quantize_block_avx512(row, gather, b.begin, b.end, w.padded[size_t(bi)], float(q.clip[size_t(bi)] * kSymmetricTieBreak),
                              b.bits, out.codes.data() + t * w.padded_cols + w.x_offset[size_t(bi)],
                              out.scales[size_t(t * nb + bi)], out.sums[size_t(t * nb + bi)]);
        continue;
      }
      float absmax = 0;
      for (int64_t k = b.begin; k < b.end; ++k) absmax = std::max(absmax, std::fabs(at(k)));
      if (!(absmax > 0)) absmax = 1;  // an all-zero group: any finite scale, codes 0
      // In float32 step by step, as libtorch computes the fake-quant scale: the same codes.
      const float scale = (2.0f * absmax) * float(q.clip[size_t(bi)] * kSymmetricTieBreak) / float((1 << b.bits) - 1);
      const float lo = float(-(1 << (b.bits - 1))), hi = float((1 << (b.bits - 1)) - 1);
      int8_t* codes = out.codes.data() + t * w.padded_cols + w.x_offset[size_t(bi)];
      int32_t sum = 0;
      for (int64_t k = b.begin; k < b.end; ++k) {
        const int c = int(std::clamp(std::nearbyint(at(k) / scale), lo, hi));
        codes[k - b.begin] = int8_t(c);
        sum += c;
      }
      // Padding columns: zero codes (the weight's padding codes are not zero after the offset).
      for (int64_t k = b.end - b.begin; k < w.padded[size_t(bi)]; ++k) codes[k] = 0;
      out.scales[size_t(t * nb + bi)] = scale;
      out.sums[size_t(t * nb + bi)] = sum;
    }
  }
}

namespace {

// The portable kernel: the packed layout read one byte at a time.
void qgemm_scalar(const QuantizedActivations& x, const PackedWeight& w, float* y) {
  const int64_t nb = int64_t(w.blocks.size()), prow = w.panels * kPanel;
#pragma omp parallel for schedule(static)
  for (int64_t panel = 0; panel < w.panels; ++panel) {
    for (int64_t t = 0; t < x.tokens; ++t) {
      float out[kPanel] = {};
      for (int64_t bi = 0; bi < nb; ++bi) {
        const ColumnBlock& b = w.blocks[size_t(bi)];
        const int64_t line = line_columns(b.bits);
        const uint8_t* data = w.data.data() + panel * w.panel_bytes + w.panel_offset_of_block[size_t(bi)];
        const int8_t* xc = x.codes.data() + t * x.padded_cols + w.x_offset[size_t(bi)];
        int32_t acc[kPanel] = {};
        for (int64_t step = 0; step < w.padded[size_t(bi)] / line; ++step)
          for (int64_t r = 0; r < kPanel; ++r)
            for (int64_t i = 0; i < 4; ++i) {
              const uint8_t byte = data[step * 64 + r * 4 + i];
              if (b.bits == 8) {
                acc[r] += int32_t(byte) * xc[step * 4 + i];
              } else {
                acc[r] += int32_t(byte & 0x0F) * xc[step * 8 + i];
                acc[r] += int32_t(byte >> 4) * xc[step * 8 + 4 + i];
              }
            }
        const int32_t sum = x.sums[size_t(t * nb + bi)];
        const float sx = x.scales[size_t(t * nb + bi)];
        for (int64_t r = 0; r < kPanel; ++r) {
          const int64_t n = panel * kPanel + r;
          const int32_t dot = acc[r] - w.code_offset[size_t(bi * prow + n)] * sum;
          out[r] += float(dot) * w.scales[size_t(bi * prow + n)] * sx;
        }
      }
      for (int64_t r = 0; r < kPanel && panel * kPanel + r < w.rows; ++r) y[t * w.rows + panel * kPanel + r] = out[r];
    }
  }
}

}  // namespace

void qgemm(const QuantizedActivations& x, const PackedWeight& w, float* y, Isa isa) {
  check_integer_layout(w);
  if (x.padded_cols != w.padded_cols || x.blocks != int64_t(w.blocks.size()))
    fail("activations quantized for another layout ({} columns, {} blocks; the weight has {}, {})", x.padded_cols,
         x.blocks, w.padded_cols, w.blocks.size());
  switch (isa) {
    case Isa::kScalar: return qgemm_scalar(x, w, y);
    case Isa::kAvx512Vnni: return qgemm_avx512vnni(x, w, y);
  }
}

void qgemm_reference(const int8_t* x_codes, const float* x_scales, int64_t tokens, const int8_t* w_codes,
                     const float* w_scales, const float* w_zeros, int64_t rows, int64_t cols,
                     const std::vector<ColumnBlock>& blocks, double* y) {
  const int64_t nb = int64_t(blocks.size());
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t n = 0; n < rows; ++n) {
      double total = 0;
      for (int64_t bi = 0; bi < nb; ++bi) {
        double dot = 0;
        for (int64_t k = blocks[size_t(bi)].begin; k < blocks[size_t(bi)].end; ++k)
          dot += (double(w_codes[n * cols + k]) - double(w_zeros[n * nb + bi])) * double(x_codes[t * cols + k]);
        total += dot * double(w_scales[n * nb + bi]) * double(x_scales[t * nb + bi]);
      }
      y[t * rows + n] = total;
    }
}

}  // namespace toga::rt
