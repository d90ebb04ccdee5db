// wgemm on AVX-512: per 16-row panel and tile of up to 16 tokens, each 64-byte line is unpacked one
// column at a time (shift, mask, convert: 16 rows' codes). Tiles of 8 or 16 tokens dequantize each
// column once (u·s − zo·s, one FMA) for all their tokens; tiles of up to 4 (decode) skip that FMA:
// they sum u·x per block and apply s·(Σ u·x − zo·Σ x) at its end, and binary columns need no
// conversion at all — the code bit selects whether x is added (a masked add). The panel's codes stay
// in L1 across tiles.
#include <immintrin.h>

#include <algorithm>

#include "runtime/wgemm.h"
#include "runtime/token_tiles.h"

// GCC 12's unmasked intrinsics pass _mm512_undefined_*() as their merge source; once inlined and
// unrolled it reports those as maybe-uninitialized (a false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace toga::rt {

namespace {

constexpr int64_t kPanel = 16;

// Columns [k0, k0 + count) of a line from `word`: column j in bits [step·j, step·j + width), so the
// word shifts right by `Step` per column (INT4 calls this twice: low nibbles, then high).
template <int T, int Step, int Width, int Count>
__attribute__((target("avx512f"), always_inline)) inline void columns(__m512i word, int count, const float* const* xr,
                                                                      int64_t k0, __m512 s, __m512 nzs, __m512* acc) {
  const __m512i mask = _mm512_set1_epi32((1 << Width) - 1);
#pragma GCC unroll 32
  for (int j = 0; j < Count; ++j) {
    if (j >= count) break;
    const __m512 u = _mm512_cvtepi32_ps(_mm512_and_si512(word, mask));
    const __m512 wv = _mm512_fmadd_ps(u, s, nzs);
#pragma GCC unroll 16
    for (int i = 0; i < T; ++i) acc[i] = _mm512_fmadd_ps(wv, _mm512_set1_ps(xr[i][k0 + j]), acc[i]);
    word = _mm512_srli_epi32(word, Step);
  }
}

// The per-block sums of small tiles: bacc[i] += u·x[i][k] (no dequantization per column).
template <int T, int Step, int Width, int Count>
__attribute__((target("avx512f"), always_inline)) inline void column_sums(__m512i word, int count, const float* const* xr,
                                                                          int64_t k0, __m512* bacc) {
  const __m512i mask = _mm512_set1_epi32((1 << Width) - 1);
#pragma GCC unroll 32
  for (int j = 0; j < Count; ++j) {
    if (j >= count) break;
    const __m512 u = _mm512_cvtepi32_ps(_mm512_and_si512(word, mask));
#pragma GCC unroll 4
    for (int i = 0; i < T; ++i) bacc[i] = _mm512_fmadd_ps(u, _mm512_set1_ps(xr[i][k0 + j]), bacc[i]);
    word = _mm512_srli_epi32(word, Step);
  }
}

// Binary columns: column j's bit moved to the sign bit (the word doubled per column, last column
// first) selects the rows that add x.
template <int T>
__attribute__((target("avx512f"), always_inline)) inline void binary_column_sums(__m512i word, int count,
                                                                                 const float* const* xr, int64_t k0,
                                                                                 __m512* bacc) {
  if (count < 32) word = _mm512_sll_epi32(word, _mm_cvtsi32_si128(32 - count));
  const __m512i zero = _mm512_setzero_si512();
#pragma GCC unroll 32
  for (int j = 31; j >= 0; --j) {
    if (j >= count) continue;
    const __mmask16 set = _mm512_cmplt_epi32_mask(word, zero);
#pragma GCC unroll 4
    for (int i = 0; i < T; ++i) bacc[i] = _mm512_mask_add_ps(bacc[i], set, bacc[i], _mm512_set1_ps(xr[i][k0 + j]));
    word = _mm512_add_epi32(word, word);
  }
}

template <int Bits, int T>
__attribute__((target("avx512f"))) void block_sums(const uint8_t* data, int64_t width, const float* const* xr,
                                                   int64_t begin, __m512* bacc) {
  constexpr int kLine = 32 / Bits;
  for (int64_t j0 = 0; j0 < width; j0 += kLine) {
    const __m512i raw = _mm512_loadu_si512(data + (j0 / kLine) * 64);
    const int left = int(std::min<int64_t>(kLine, width - j0));
    if constexpr (Bits == 1) {
      binary_column_sums<T>(raw, left, xr, begin + j0, bacc);
    } else if constexpr (Bits == 4) {
      column_sums<T, 8, 4, 4>(raw, left, xr, begin + j0, bacc);
      if (left > 4) column_sums<T, 8, 4, 4>(_mm512_srli_epi32(raw, 4), left - 4, xr, begin + j0 + 4, bacc);
    } else {
      column_sums<T, Bits, Bits, kLine>(raw, left, xr, begin + j0, bacc);
    }
  }
}

// Σ x[begin, end) of one token.
__attribute__((target("avx512f"))) inline float row_sum(const float* x, int64_t begin, int64_t end) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t k = begin; k < end; k += 16) {
    const __mmask16 m = end - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (end - k)) - 1);
    acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(m, x + k));
  }
  return _mm512_reduce_add_ps(acc);
}

template <int Bits, int T>
__attribute__((target("avx512f"))) void block(const uint8_t* data, int64_t width, const float* const* xr, int64_t begin,
                                              __m512 s, __m512 nzs, __m512* acc) {
  constexpr int kLine = 32 / Bits;
  for (int64_t j0 = 0; j0 < width; j0 += kLine) {
    const __m512i raw = _mm512_loadu_si512(data + (j0 / kLine) * 64);
    const int left = int(std::min<int64_t>(kLine, width - j0));
    if constexpr (Bits == 4) {
      columns<T, 8, 4, 4>(raw, left, xr, begin + j0, s, nzs, acc);
      if (left > 4) columns<T, 8, 4, 4>(_mm512_srli_epi32(raw, 4), left - 4, xr, begin + j0 + 4, s, nzs, acc);
    } else {
      columns<T, Bits, Bits, kLine>(raw, left, xr, begin + j0, s, nzs, acc);
    }
  }
}

template <int T>
__attribute__((target("avx512f"))) void tile(const float* x, int64_t t0, const PackedWeight& w, int64_t panel, float* y) {
  const int64_t nb = int64_t(w.blocks.size()), prow = w.panels * kPanel;
  const int64_t valid_rows = std::min<int64_t>(kPanel, w.rows - panel * kPanel);
  const __mmask16 row_mask = valid_rows == kPanel ? __mmask16(0xFFFF) : __mmask16((1u << valid_rows) - 1);
  const float* xr[T];
  for (int i = 0; i < T; ++i) xr[i] = x + (t0 + i) * w.cols;
  __m512 acc[T];
  for (int i = 0; i < T; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t bi = 0; bi < nb; ++bi) {
    const ColumnBlock& b = w.blocks[size_t(bi)];
    const uint8_t* data = w.data.data() + panel * w.panel_bytes + w.panel_offset_of_block[size_t(bi)];
    const __m512 s = _mm512_loadu_ps(w.scales.data() + bi * prow + panel * kPanel);
    const __m512 nzs = _mm512_sub_ps(_mm512_setzero_ps(),
                                     _mm512_mul_ps(_mm512_loadu_ps(w.zero_offset.data() + bi * prow + panel * kPanel), s));
    const int64_t width = b.end - b.begin;
    if constexpr (T <= 4) {
      __m512 bacc[T];
      for (int i = 0; i < T; ++i) bacc[i] = _mm512_setzero_ps();
      switch (b.bits) {
        case 1: block_sums<1, T>(data, width, xr, b.begin, bacc); break;
        case 2: block_sums<2, T>(data, width, xr, b.begin, bacc); break;
        case 4: block_sums<4, T>(data, width, xr, b.begin, bacc); break;
        default: block_sums<8, T>(data, width, xr, b.begin, bacc); break;
      }
      // acc += s·Σ u·x − zo·s·Σ x
      for (int i = 0; i < T; ++i)
        acc[i] = _mm512_fmadd_ps(s, bacc[i], _mm512_fmadd_ps(nzs, _mm512_set1_ps(row_sum(xr[i], b.begin, b.end)), acc[i]));
    } else {
      switch (b.bits) {
        case 1: block<1, T>(data, width, xr, b.begin, s, nzs, acc); break;
        case 2: block<2, T>(data, width, xr, b.begin, s, nzs, acc); break;
        case 4: block<4, T>(data, width, xr, b.begin, s, nzs, acc); break;
        default: block<8, T>(data, width, xr, b.begin, s, nzs, acc); break;
      }
    }
  }
  for (int i = 0; i < T; ++i) _mm512_mask_storeu_ps(y + (t0 + i) * w.rows + panel * kPanel, row_mask, acc[i]);
}

void run_panel(const float* x, int64_t tokens, const PackedWeight& w, float* y, int64_t panel) {
  for_each_token_tile(tokens, [&](auto width, int64_t t) { tile<decltype(width)::value>(x, t, w, panel, y); });
}

}  // namespace

void wgemm_avx512(const float* x, int64_t tokens, const PackedWeight& w, float* y) {
#pragma omp parallel for schedule(static)
  for (int64_t panel = 0; panel < w.panels; ++panel) run_panel(x, tokens, w, y, panel);
}

}  // namespace toga::rt
