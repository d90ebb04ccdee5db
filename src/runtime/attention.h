// Causal (optionally sliding-window) attention of one head for a tile of up to 16 consecutive
// queries over float key/value rows: scores as a small GEMM (16 queries in the lanes of one vector,
// no horizontal sums), a two-pass softmax with a vectorized exp, and P·V with the probabilities
// broadcast. attend_reference is the plain per-query definition it is tested against.
#pragma once

#include <cstdint>

#include "runtime/cpu.h"

namespace toga::rt {

struct AttentionTile {
  const float* q;       // query j at q + j·q_stride, head_dim floats
  int64_t q_stride = 0;
  int nq = 0;           // 1..16 queries, at absolute positions pos0 .. pos0 + nq − 1
  int64_t pos0 = 0;
  int64_t window = 0;   // 0 = full causal; else a key is visible when pos − window < its position
  const float* keys;    // key s (position s) at keys + s·head_dim
  const float* values;
  int64_t head_dim = 0;
  float scale = 1;
  float* out;           // query j's output at out + j·out_stride
  int64_t out_stride = 0;
};

// `scratch` holds at least 16·(pos0 + nq) floats.
void attend(const AttentionTile& a, float* scratch, Isa isa);
void attend_reference(const AttentionTile& a);

}  // namespace toga::rt
