#include "runtime/attention.h"

#include "runtime/vector_math.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "util/error.h"

// GCC 12's unmasked intrinsics pass _mm512_undefined_*() as their merge source; once inlined it
// reports those as maybe-uninitialized (a false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace toga::rt {

namespace {

int64_t first_key(const AttentionTile& a, int64_t pos) { return a.window > 0 ? std::max<int64_t>(0, pos - a.window + 1) : 0; }

__attribute__((target("avx512f"))) void attend_avx512(const AttentionTile& a, float* scores) {
  const int64_t d = a.head_dim, last = a.pos0 + (a.nq - 1) * a.pos_step, first = first_key(a, a.pos0);
  // Queries transposed: qt[i] holds element i of the 16 queries (zero beyond nq).
  alignas(64) float qt[256][16];
  for (int64_t i = 0; i < d; ++i)
    for (int j = 0; j < 16; ++j) qt[i][j] = j < a.nq ? a.q[j * a.q_stride + i] * a.scale : 0.0f;
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i query_pos =
      _mm512_add_epi32(_mm512_set1_epi32(int32_t(a.pos0)), _mm512_mullo_epi32(lane, _mm512_set1_epi32(int32_t(a.pos_step))));
  const __m512 minus_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 best = minus_inf;
  for (int64_t s = first; s <= last; ++s) {
    const float* k = a.keys + s * d;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= d; i += 2) {
      acc0 = _mm512_fmadd_ps(_mm512_load_ps(qt[i]), _mm512_set1_ps(k[i]), acc0);
      acc1 = _mm512_fmadd_ps(_mm512_load_ps(qt[i + 1]), _mm512_set1_ps(k[i + 1]), acc1);
    }
    if (i < d) acc0 = _mm512_fmadd_ps(_mm512_load_ps(qt[i]), _mm512_set1_ps(k[i]), acc0);
    __m512 sc = _mm512_add_ps(acc0, acc1);
    // Lane j sees key s when s ≤ pos0 + j (and, with a window, s > pos0 + j − window).
    __mmask16 visible = _mm512_cmple_epi32_mask(_mm512_set1_epi32(int32_t(s)), query_pos);
    if (a.window > 0)
      visible &= _mm512_cmpgt_epi32_mask(_mm512_set1_epi32(int32_t(s)), _mm512_sub_epi32(query_pos, _mm512_set1_epi32(int32_t(a.window))));
    sc = _mm512_mask_blend_ps(visible, minus_inf, sc);
    _mm512_storeu_ps(scores + (s - first) * 16, sc);
    best = _mm512_max_ps(best, sc);
  }
  __m512 sum = _mm512_setzero_ps();
  for (int64_t s = first; s <= last; ++s) {
    float* row = scores + (s - first) * 16;
    const __m512 x = _mm512_loadu_ps(row);
    // Masked keys (−inf) weigh exactly 0 (exp_avx512 clamps its argument at −87).
    const __m512 e = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, minus_inf, _CMP_NEQ_OQ), exp_avx512(_mm512_sub_ps(x, best)));
    _mm512_storeu_ps(row, e);
    sum = _mm512_add_ps(sum, e);
  }
  alignas(64) float inv[16];
  _mm512_store_ps(inv, _mm512_div_ps(_mm512_set1_ps(1.0f), sum));
  // P·V, 16 dimensions at a time: one accumulator per query.
  for (int64_t c = 0; c < d; c += 16) {
    const __mmask16 dims = d - c >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (d - c)) - 1);
    __m512 acc[16];
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
    for (int64_t s = first; s <= last; ++s) {
      const __m512 v = _mm512_maskz_loadu_ps(dims, a.values + s * d + c);
      const float* p = scores + (s - first) * 16;
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j) acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(p[j]), v, acc[j]);
    }
    for (int j = 0; j < a.nq; ++j)
      _mm512_mask_storeu_ps(a.out + j * a.out_stride + c, dims, _mm512_mul_ps(acc[j], _mm512_set1_ps(inv[j])));
  }
}

}  // namespace

void attend_reference(const AttentionTile& a) {
  const int64_t d = a.head_dim;
  std::vector<double> scores;
  for (int j = 0; j < a.nq; ++j) {
    const int64_t pos = a.pos0 + j * a.pos_step, first = first_key(a, pos);
    const float* q = a.q + j * a.q_stride;
    scores.assign(size_t(pos - first + 1), 0.0);
    double best = -std::numeric_limits<double>::infinity(), sum = 0;
    for (int64_t s = first; s <= pos; ++s) {
      double dot = 0;
      for (int64_t i = 0; i < d; ++i) dot += double(q[i]) * double(a.keys[s * d + i]);
      scores[size_t(s - first)] = dot * double(a.scale);
      best = std::max(best, scores[size_t(s - first)]);
    }
    for (auto& sc : scores) sum += (sc = std::exp(sc - best));
    for (int64_t i = 0; i < d; ++i) {
      double acc = 0;
      for (int64_t s = first; s <= pos; ++s) acc += scores[size_t(s - first)] / sum * double(a.values[s * d + i]);
      a.out[j * a.out_stride + i] = float(acc);
    }
  }
}

void attend(const AttentionTile& a, float* scratch, Isa isa) {
  if (a.nq < 1 || a.nq > 16) fail("attention tile of {} queries (1..16)", a.nq);
  if (a.pos_step != 0 && a.pos_step != 1) fail("attention tile: position step {} (0 or 1)", a.pos_step);
  if (isa == Isa::kScalar || a.head_dim > 256) return attend_reference(a);
  attend_avx512(a, scratch);
}

}  // namespace toga::rt
