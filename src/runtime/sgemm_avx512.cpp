// sgemm on AVX-512: per 16-row panel and tile of up to 16 tokens, one 64-byte load per column and
// one FMA per token; the panel stays in L1/L2 across the tiles of a long prefill.
#include <immintrin.h>

#include <algorithm>

#include "runtime/sgemm.h"
#include "runtime/token_tiles.h"

namespace toga::rt {

namespace {

constexpr int64_t kPanel = 16;

template <int T>
__attribute__((target("avx512f"))) void tile(const float* x, int64_t t0, const DenseWeight& w, int64_t panel, float* y) {
  const float* data = w.data.data() + panel * w.cols * kPanel;
  const int64_t valid_rows = std::min<int64_t>(kPanel, w.rows - panel * kPanel);
  const __mmask16 row_mask = valid_rows == kPanel ? __mmask16(0xFFFF) : __mmask16((1u << valid_rows) - 1);
  const float* xr[T];
  for (int i = 0; i < T; ++i) xr[i] = x + (t0 + i) * w.cols;
  __m512 acc[T];
  for (int i = 0; i < T; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < w.cols; ++k) {
    const __m512 wv = _mm512_loadu_ps(data + k * kPanel);
#pragma GCC unroll 16
    for (int i = 0; i < T; ++i) acc[i] = _mm512_fmadd_ps(wv, _mm512_set1_ps(xr[i][k]), acc[i]);
  }
  for (int i = 0; i < T; ++i) _mm512_mask_storeu_ps(y + (t0 + i) * w.rows + panel * kPanel, row_mask, acc[i]);
}

void run_panel(const float* x, int64_t tokens, const DenseWeight& w, float* y, int64_t panel) {
  for_each_token_tile(tokens, [&](auto width, int64_t t) { tile<decltype(width)::value>(x, t, w, panel, y); });
}

}  // namespace

void sgemm_avx512(const float* x, int64_t tokens, const DenseWeight& w, float* y) {
#pragma omp parallel for schedule(static)
  for (int64_t panel = 0; panel < w.panels; ++panel) run_panel(x, tokens, w, y, panel);
}

}  // namespace toga::rt
