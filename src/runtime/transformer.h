// The runtime's forward pass of a Llama-family decoder, without libtorch: float32 activations,
// every linear on its packed kernel (runtime/linear.h), RMSNorm, RoPE (rotate halves), grouped-query
// causal attention (optionally sliding-window) over a KV cache stored in float32 or as integer codes
// (INT4: two codes per byte, one scale and zero per token and head), SwiGLU. Pruned blocks read and
// write their channel subsets of the full-width residual stream. It computes what the libtorch
// forward (model/model.h) computes for the same checkpoint; model/runtime_export.h builds it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "runtime/linear.h"

namespace toga::rt {

struct KvQuant {
  int bits = 16;  // 16 = float32 cache
  bool symmetric = false;
  double clip = 1.0;
};

struct TransformerBlock {
  std::vector<float> attn_norm, mlp_norm;  // [hidden]
  std::vector<float> q_norm, k_norm;       // [head_dim] (Qwen3) or empty
  Linear q, k, v, o, gate, up, down;
  // q/k/v and gate/up as one linear each when they read their input the same way (append_rows):
  // then the parts keep only their shapes, and rows == 0 here means "not fused".
  Linear qkv, gate_up;
  int64_t heads = 0, kv_heads = 0;
  // Residual channels o_proj's and down_proj's rows are added to; empty = all, in order.
  std::vector<int32_t> attn_out, mlp_out;
};

struct Transformer {
  int64_t hidden = 0, head_dim = 0, vocab = 0;
  double rms_eps = 1e-5;
  int64_t sliding_window = 0;       // 0 = full causal attention
  std::vector<float> rope_inv_freq;  // [head_dim / 2], scaling applied
  std::vector<float> embed;          // [vocab, hidden]
  std::vector<float> final_norm;     // [hidden]
  Linear lm_head;
  std::vector<TransformerBlock> blocks;
  KvQuant kv;

  // Bytes of every linear's stored weight (what one decode step streams) and of the embedding.
  int64_t linear_bytes() const;
};

// Seconds per operator, summed over the forward calls made while a Session's profile is set.
struct OpProfile {
  static constexpr int kOps = 9;
  static constexpr const char* kNames[kOps] = {"embed+norms", "q/k/v",  "rope+kv write", "attention", "o_proj",
                                               "gate/up",     "swiglu", "down_proj",     "lm_head"};
  double seconds[kOps] = {};
  int64_t calls = 0;
};

// One sequence's KV cache and working buffers. forward() continues from the cached positions.
class Session {
 public:
  // Times every operator of the following forward calls into *profile (null: off).
  void set_profile(OpProfile* profile) { profile_ = profile; }
  Session(const Transformer& model, int64_t capacity);
  // Runs `n` tokens; writes logits [n, vocab] (all_logits) or of the last token only [vocab].
  void forward(const int32_t* tokens, int64_t n, float* logits, bool all_logits);
  int64_t length() const { return length_; }
  int64_t capacity() const { return capacity_; }
  void reset() { length_ = 0; }
  // Forgets the positions from `length` on (they are overwritten by the next forward).
  void truncate(int64_t length) { length_ = std::min(length_, std::max<int64_t>(length, 0)); }
  // Bytes the cache holds at full capacity.
  int64_t cache_bytes() const;

 private:
  struct LayerCache {
    std::vector<float> k, v;            // float cache: [kv_heads][capacity][head_dim]
    std::vector<uint8_t> kc, vc;        // integer cache: [kv_heads][capacity][row_bytes]
    std::vector<float> ks, kz, vs, vz;  // [kv_heads][capacity]: scale and zero offset per row
  };
  void block(int layer, int64_t n);
  void store_kv(LayerCache& c, int64_t head, int64_t pos, const float* k, const float* v) const;

  const Transformer& m_;
  int64_t capacity_, length_ = 0, row_bytes_ = 0;
  std::vector<LayerCache> cache_;
  std::vector<float> x_, h_, q_, k_, v_, attn_, o_, gate_, up_, kf_, vf_, fused_;
  LinearScratch scratch_;
  OpProfile* profile_ = nullptr;
};

}  // namespace toga::rt
