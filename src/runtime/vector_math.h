// Elementwise math of the runtime on AVX-512: exp (a degree-6 polynomial on the reduced argument,
// relative error ~2e-7 against std::exp, tested), and SwiGLU's silu(gate)·up built on it.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "runtime/cpu.h"

namespace toga::rt {

// e^x for x in [−87, 88] (clamped outside): 2^k·p(r), r = x − k·ln2.
__attribute__((target("avx512f"), always_inline)) inline __m512 exp_avx512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, k);
}

// gate[i] = gate[i] / (1 + e^−gate[i]) · up[i].
void silu_mul(float* gate, const float* up, int64_t n, Isa isa);
// The same over rows of [gate | up] (a fused gate/up product, each half `width` wide): out[t] =
// silu(gate_t)·up_t, out [rows, width].
void silu_mul_rows(const float* fused, int64_t rows, int64_t width, float* out, Isa isa);
// exp over an array (for the tests of exp_avx512).
void exp_array(const float* x, float* y, int64_t n, Isa isa);

}  // namespace toga::rt
