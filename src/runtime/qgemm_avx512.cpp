// qgemm on AVX-512 VNNI: per pair of 16-row panels and tile of 4 tokens, one vpdpbusd per 64-byte
// weight line (16 rows × 4 columns) and token, the activation's 4 codes broadcast once for both
// panels; INT4 lines are split into their low and high nibbles (two vpdpbusd). Block results are corrected for the code offset in
// int32 (exact), then scaled and accumulated in float.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "runtime/qgemm.h"

// GCC 12's unmasked intrinsics pass _mm512_undefined_*() as their merge source; once inlined it
// reports those as (maybe-)uninitialized (a false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace toga::rt {

namespace {

constexpr int64_t kPanel = 16;
constexpr int kTile = 4;

__attribute__((target("avx512f"))) inline __m512i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// P consecutive 16-row panels (P = 2: each activation broadcast feeds two weight lines) for every
// token, in tiles of kTile tokens. The OpenMP loop stays outside: the region GCC outlines would not
// carry this function's target attribute.
template <int P>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void run_panels(const QuantizedActivations& x, const PackedWeight& w,
                                                                        float* y, int64_t panel0) {
  const int64_t nb = int64_t(w.blocks.size()), prow = w.panels * kPanel;
  const uint8_t* pdata[P];
  __mmask16 row_mask[P];
  for (int p = 0; p < P; ++p) {
    pdata[p] = w.data.data() + (panel0 + p) * w.panel_bytes;
    const int64_t valid_rows = std::min<int64_t>(kPanel, w.rows - (panel0 + p) * kPanel);
    row_mask[p] = valid_rows == kPanel ? __mmask16(0xFFFF) : __mmask16((1u << valid_rows) - 1);
  }
  for (int64_t t0 = 0; t0 < x.tokens; t0 += kTile) {
    const int nt = int(std::min<int64_t>(kTile, x.tokens - t0));
    __m512 out[P][kTile];
    for (int p = 0; p < P; ++p)
      for (int i = 0; i < kTile; ++i) out[p][i] = _mm512_setzero_ps();
    for (int64_t bi = 0; bi < nb; ++bi) {
      const ColumnBlock& b = w.blocks[size_t(bi)];
      const int8_t* xc[kTile];
      for (int i = 0; i < kTile; ++i)  // a tile's missing tokens repeat its first: valid memory, discarded
        xc[i] = x.codes.data() + (t0 + (i < nt ? i : 0)) * x.padded_cols + w.x_offset[size_t(bi)];
      __m512i acc[P][kTile];
      for (int p = 0; p < P; ++p)
        for (int i = 0; i < kTile; ++i) acc[p][i] = _mm512_setzero_si512();
      const int64_t block_at = w.panel_offset_of_block[size_t(bi)];
      if (b.bits == 8) {
        const int64_t steps = w.padded[size_t(bi)] / 4;
        for (int64_t s = 0; s < steps; ++s) {
          __m512i wv[P];
          for (int p = 0; p < P; ++p) wv[p] = _mm512_loadu_si512(pdata[p] + block_at + s * 64);
          for (int i = 0; i < kTile; ++i) {
            const __m512i xb = broadcast4(xc[i] + s * 4);
            for (int p = 0; p < P; ++p) acc[p][i] = _mm512_dpbusd_epi32(acc[p][i], wv[p], xb);
          }
        }
      } else {
        const __m512i nibble = _mm512_set1_epi8(0x0F);
        const int64_t steps = w.padded[size_t(bi)] / 8;
        for (int64_t s = 0; s < steps; ++s) {
          __m512i lo[P], hi[P];
          for (int p = 0; p < P; ++p) {
            const __m512i raw = _mm512_loadu_si512(pdata[p] + block_at + s * 64);
            lo[p] = _mm512_and_si512(raw, nibble);
            hi[p] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), nibble);
          }
          for (int i = 0; i < kTile; ++i) {
            const __m512i xl = broadcast4(xc[i] + s * 8), xh = broadcast4(xc[i] + s * 8 + 4);
            for (int p = 0; p < P; ++p) {
              acc[p][i] = _mm512_dpbusd_epi32(acc[p][i], lo[p], xl);
              acc[p][i] = _mm512_dpbusd_epi32(acc[p][i], hi[p], xh);
            }
          }
        }
      }
      for (int p = 0; p < P; ++p) {
        const int64_t row0 = bi * prow + (panel0 + p) * kPanel;
        const __m512i offset = _mm512_loadu_si512(w.code_offset.data() + row0);
        const __m512 sw = _mm512_loadu_ps(w.scales.data() + row0);
        for (int i = 0; i < nt; ++i) {
          const int64_t t = t0 + i;
          const __m512i dot = _mm512_sub_epi32(acc[p][i], _mm512_mullo_epi32(offset, _mm512_set1_epi32(x.sums[size_t(t * nb + bi)])));
          out[p][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(sw, _mm512_set1_ps(x.scales[size_t(t * nb + bi)])),
                                      out[p][i]);
        }
      }
    }
    for (int p = 0; p < P; ++p)
      for (int i = 0; i < nt; ++i)
        _mm512_mask_storeu_ps(y + (t0 + i) * w.rows + (panel0 + p) * kPanel, row_mask[p], out[p][i]);
  }
}

}  // namespace

inline __mmask16 tail_mask(int64_t left) { return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1); }

// 16 (masked) columns of a row from column k on, through the gather index when there is one.
__attribute__((target("avx512f"), always_inline)) inline __m512 load_columns(const float* row, const int32_t* gather,
                                                                             int64_t k, __mmask16 m) {
  if (!gather) return _mm512_maskz_loadu_ps(m, row + k);
  return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, _mm512_maskz_loadu_epi32(m, gather + k), row, 4);
}

__attribute__((target("avx512f,avx512bw"))) void quantize_block_avx512(const float* row, const int32_t* gather, int64_t begin,
                                                                       int64_t end, int64_t padded, float clip_factor, int bits,
                                                                       int8_t* codes, float& scale_out, int32_t& sum_out) {
  const int64_t width = end - begin;
  __m512 mx = _mm512_setzero_ps();
  for (int64_t j = 0; j < width; j += 16) mx = _mm512_max_ps(mx, _mm512_abs_ps(load_columns(row, gather, begin + j, tail_mask(width - j))));
  float absmax = _mm512_reduce_max_ps(mx);
  if (!(absmax > 0)) absmax = 1;  // an all-zero group: any finite scale, codes 0
  // The scalar path's formula (qgemm.cpp), so both give the fake-quant codes.
  const float scale = (2.0f * absmax) * clip_factor / float((1 << bits) - 1);
  const __m512 vscale = _mm512_set1_ps(scale);
  const __m512i lo = _mm512_set1_epi32(-(1 << (bits - 1))), hi = _mm512_set1_epi32((1 << (bits - 1)) - 1);
  __m512i sum = _mm512_setzero_si512();
  for (int64_t j = 0; j < width; j += 16) {
    const __mmask16 m = tail_mask(width - j);
    // Division as the reference does it; conversion rounds to nearest even, as nearbyint.
    __m512i c = _mm512_cvtps_epi32(_mm512_div_ps(load_columns(row, gather, begin + j, m), vscale));
    c = _mm512_min_epi32(_mm512_max_epi32(c, lo), hi);
    sum = _mm512_add_epi32(sum, _mm512_maskz_mov_epi32(m, c));
    _mm512_mask_cvtepi32_storeu_epi8(codes + j, m, c);
  }
  for (int64_t j = width; j < padded; ++j) codes[j] = 0;
  scale_out = scale;
  sum_out = _mm512_reduce_add_epi32(sum);
}

void qgemm_avx512vnni(const QuantizedActivations& x, const PackedWeight& w, float* y) {
  const int64_t pairs = (w.panels + 1) / 2;
#pragma omp parallel for schedule(static)
  for (int64_t pair = 0; pair < pairs; ++pair) {
    if (2 * pair + 1 < w.panels) run_panels<2>(x, w, y, 2 * pair);
    else run_panels<1>(x, w, y, 2 * pair);
  }
}

}  // namespace toga::rt
