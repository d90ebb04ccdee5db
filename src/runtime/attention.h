// Causal (optionally sliding-window) attention for a tile of up to 16 queries that read the same
// key/value rows (consecutive positions of one head, or the heads of one KV group at one position): scores as a small GEMM (16 queries in the lanes of one vector,
// no horizontal sums), a two-pass softmax with a vectorized exp, and P·V with the probabilities
// broadcast. attend_reference is the plain per-query definition it is tested against.
#pragma once

#include <cstdint>

#include "runtime/cpu.h"

namespace toga::rt {

struct AttentionTile {
  const float* q;       // query j at q + j·q_stride, head_dim floats
  int64_t q_stride = 0;
  int nq = 0;           // 1..16 queries, query j at absolute position pos0 + j·pos_step: consecutive
  int64_t pos0 = 0;     // positions of one head (pos_step 1), or one position's query heads that
  int64_t pos_step = 1; // share a KV head (pos_step 0, a decode step under grouped-query attention)
  int64_t window = 0;   // 0 = full causal; else a key is visible when pos − window < its position
  const float* keys;    // key s (position s) at keys + s·head_dim
  const float* values;
  int64_t head_dim = 0;
  float scale = 1;
  float* out;           // query j's output at out + j·out_stride
  int64_t out_stride = 0;
};

// `scratch` holds at least 16·(last position + 1) floats.
void attend(const AttentionTile& a, float* scratch, Isa isa);
void attend_reference(const AttentionTile& a);

}  // namespace toga::rt
