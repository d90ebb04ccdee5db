#include "runtime/vector_math.h"

#include <cmath>

// GCC 12's unmasked intrinsics pass _mm512_undefined_*() as their merge source; once inlined it
// reports those as maybe-uninitialized (a false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace toga::rt {

namespace {

// out may be gate itself.
__attribute__((target("avx512f"))) void silu_mul_avx512(const float* gate, const float* up, int64_t n, float* out) {
  int64_t i = 0;
  const __m512 one = _mm512_set1_ps(1.0f);
  for (; i + 16 <= n; i += 16) {
    const __m512 g = _mm512_loadu_ps(gate + i);
    const __m512 s = _mm512_div_ps(g, _mm512_add_ps(one, exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(s, _mm512_loadu_ps(up + i)));
  }
  for (; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void silu_mul_scalar(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

__attribute__((target("avx512f"))) void exp_avx512_array(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, exp_avx512(_mm512_loadu_ps(x + i)));
  const __mmask16 m = __mmask16((1u << (n - i)) - 1);
  if (i < n) _mm512_mask_storeu_ps(y + i, m, exp_avx512(_mm512_maskz_loadu_ps(m, x + i)));
}

}  // namespace

void silu_mul(float* gate, const float* up, int64_t n, Isa isa) {
  const int64_t chunk = 4096;
#pragma omp parallel for schedule(static) if (n > 4 * chunk)
  for (int64_t c = 0; c < n; c += chunk) {
    const int64_t len = std::min(chunk, n - c);
    if (isa == Isa::kScalar) silu_mul_scalar(gate + c, up + c, len, gate + c);
    else silu_mul_avx512(gate + c, up + c, len, gate + c);
  }
}

void silu_mul_rows(const float* fused, int64_t rows, int64_t width, float* out, Isa isa) {
#pragma omp parallel for schedule(static) if (rows * width > 65536)
  for (int64_t t = 0; t < rows; ++t) {
    const float* gate = fused + t * 2 * width;
    if (isa == Isa::kScalar) silu_mul_scalar(gate, gate + width, width, out + t * width);
    else silu_mul_avx512(gate, gate + width, width, out + t * width);
  }
}

void exp_array(const float* x, float* y, int64_t n, Isa isa) {
  if (isa == Isa::kScalar) {
    for (int64_t i = 0; i < n; ++i) y[i] = std::exp(x[i]);
    return;
  }
  exp_avx512_array(x, y, n);
}

}  // namespace toga::rt
