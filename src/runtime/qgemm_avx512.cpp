// qgemm on AVX-512 VNNI: per 16-row panel and tile of 4 tokens, one vpdpbusd per 64-byte weight line
// (16 rows × 4 columns) and token, the activation's 4 codes broadcast; INT4 lines are split into
// their low and high nibbles (two vpdpbusd). Block results are corrected for the code offset in
// int32 (exact), then scaled and accumulated in float.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "runtime/qgemm.h"

namespace toga::rt {

namespace {

constexpr int64_t kPanel = 16;
constexpr int kTile = 4;

__attribute__((target("avx512f"))) inline __m512i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// One 16-row panel for every token. The OpenMP loop stays outside: the region GCC outlines would
// not carry this function's target attribute.
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void run_panel(const QuantizedActivations& x, const PackedWeight& w,
                                                                       float* y, int64_t panel) {
  const int64_t nb = int64_t(w.blocks.size()), prow = w.panels * kPanel;
  {
    const uint8_t* pdata = w.data.data() + panel * w.panel_bytes;
    const int64_t valid_rows = std::min<int64_t>(kPanel, w.rows - panel * kPanel);
    const __mmask16 row_mask = valid_rows == kPanel ? __mmask16(0xFFFF) : __mmask16((1u << valid_rows) - 1);
    for (int64_t t0 = 0; t0 < x.tokens; t0 += kTile) {
      const int nt = int(std::min<int64_t>(kTile, x.tokens - t0));
      __m512 out[kTile];
      for (int i = 0; i < kTile; ++i) out[i] = _mm512_setzero_ps();
      for (int64_t bi = 0; bi < nb; ++bi) {
        const ColumnBlock& b = w.blocks[size_t(bi)];
        const uint8_t* data = pdata + w.panel_offset_of_block[size_t(bi)];
        const int8_t* xc[kTile];
        for (int i = 0; i < kTile; ++i)  // a tile's missing tokens repeat its first: valid memory, discarded
          xc[i] = x.codes.data() + (t0 + (i < nt ? i : 0)) * x.padded_cols + w.x_offset[size_t(bi)];
        __m512i acc[kTile];
        for (int i = 0; i < kTile; ++i) acc[i] = _mm512_setzero_si512();
        if (b.bits == 8) {
          const int64_t steps = w.padded[size_t(bi)] / 4;
          for (int64_t s = 0; s < steps; ++s) {
            const __m512i wv = _mm512_loadu_si512(data + s * 64);
            for (int i = 0; i < kTile; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], wv, broadcast4(xc[i] + s * 4));
          }
        } else {
          const __m512i nibble = _mm512_set1_epi8(0x0F);
          const int64_t steps = w.padded[size_t(bi)] / 8;
          for (int64_t s = 0; s < steps; ++s) {
            const __m512i raw = _mm512_loadu_si512(data + s * 64);
            const __m512i lo = _mm512_and_si512(raw, nibble);
            const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), nibble);
            for (int i = 0; i < kTile; ++i) {
              acc[i] = _mm512_dpbusd_epi32(acc[i], lo, broadcast4(xc[i] + s * 8));
              acc[i] = _mm512_dpbusd_epi32(acc[i], hi, broadcast4(xc[i] + s * 8 + 4));
            }
          }
        }
        const __m512i offset = _mm512_loadu_si512(w.code_offset.data() + bi * prow + panel * kPanel);
        const __m512 sw = _mm512_loadu_ps(w.scales.data() + bi * prow + panel * kPanel);
        for (int i = 0; i < nt; ++i) {
          const int64_t t = t0 + i;
          const __m512i dot = _mm512_sub_epi32(acc[i], _mm512_mullo_epi32(offset, _mm512_set1_epi32(x.sums[size_t(t * nb + bi)])));
          out[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(sw, _mm512_set1_ps(x.scales[size_t(t * nb + bi)])),
                                   out[i]);
        }
      }
      for (int i = 0; i < nt; ++i) _mm512_mask_storeu_ps(y + (t0 + i) * w.rows + panel * kPanel, row_mask, out[i]);
    }
  }
}

}  // namespace

void qgemm_avx512vnni(const QuantizedActivations& x, const PackedWeight& w, float* y) {
#pragma omp parallel for schedule(static)
  for (int64_t panel = 0; panel < w.panels; ++panel) run_panel(x, w, y, panel);
}

}  // namespace toga::rt
