// The one forward pass of the Llama family (Llama 2/3, Mistral, Qwen2, Qwen3) in libtorch.
//
// Every linear layer is a named LinearSite. Calibration observers, fake quantizers, pruning masks
// and learned transforms attach to sites; they never edit or copy this forward. FP, fake-quantized,
// pruned and searched models are the same code with different attachments.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "io/model_config.h"

namespace toga {

using TensorFn = std::function<torch::Tensor(const torch::Tensor&)>;

struct LinearSite {
  std::string name;      // e.g. "layers.7.mlp.down_proj", "lm_head"
  torch::Tensor weight;  // [out, in]; when in_perm is defined its columns are stored in in_perm order
  torch::Tensor bias;    // [out] or undefined
  torch::Tensor in_perm; // optional int64 [in]: the forward gathers x[..., in_perm] (channel reordering)

  // Observers see the input as it arrives from upstream, in the original channel order, before this
  // site's permutation and input transform (calibration statistics, Hessians).
  std::vector<std::function<void(const LinearSite&, const torch::Tensor&)>> observers;
  TensorFn input_transform;   // after the permutation: activation fake-quant, channel masks
  TensorFn weight_transform;  // per forward: learned masks over weights (search)
  TensorFn output_transform;  // pruning masks on the output (DISP-LLM S2/S5)

  torch::Tensor forward(const torch::Tensor& x) const;
  int64_t in_features() const { return weight.size(1); }
  int64_t out_features() const { return weight.size(0); }
  // Removes every attachment and the permutation's effect is kept (weights stay as stored).
  void clear_attachments();
};

struct Block {
  torch::Tensor attn_norm, mlp_norm;  // RMSNorm gains [hidden]
  torch::Tensor q_norm, k_norm;       // Qwen3 per-head RMSNorm gains [head_dim] (else undefined)
  LinearSite q, k, v, o, gate, up, down;
  std::vector<LinearSite*> sites() { return {&q, &k, &v, &o, &gate, &up, &down}; }
};

// Keys and values of every layer, for incremental decoding. Tensors [B, kv_heads, capacity, head_dim].
struct KVCache {
  std::vector<torch::Tensor> k, v;
  int64_t length = 0;  // positions filled (the same for every sequence of the batch)

  void clear() { k.clear(); v.clear(); length = 0; }
  // Repeats batch row 0 n times (shared-prefix scoring: one context, many continuations).
  void broadcast_batch(int64_t n);
  void truncate(int64_t new_length) { length = std::min(length, new_length); }
};

class Model {
 public:
  ModelConfig config;
  torch::Tensor embed;       // [vocab, hidden]
  torch::Tensor final_norm;  // [hidden]
  LinearSite lm_head;        // shares storage with embed when tie_word_embeddings
  std::vector<Block> blocks;
  torch::Tensor rope_inv_freq;  // [head_dim/2] float32, rope scaling applied
  // Applied to new keys (after RoPE) and values before they enter the cache and attention: KV-cache
  // quantization. Tensors are [B, kv_heads, T, head_dim].
  TensorFn kv_transform;

  torch::Dtype dtype() const { return embed.scalar_type(); }
  torch::Device device() const { return embed.device(); }

  // Logits [B, T, vocab] (in the model's dtype) for token ids [B, T]. With a cache, the ids continue
  // from cache->length and the cache is extended.
  torch::Tensor forward(const torch::Tensor& ids, KVCache* cache = nullptr) const;
  // The final normalised hidden states [B, T, hidden] (before lm_head).
  torch::Tensor forward_hidden(const torch::Tensor& ids, KVCache* cache = nullptr) const;

  // The pieces of forward(), for methods that run the model block by block (sequential GPTQ).
  torch::Tensor embed_tokens(const torch::Tensor& ids) const;
  torch::Tensor block_forward(int layer, const torch::Tensor& h, int64_t start_pos, KVCache* cache = nullptr) const;
  torch::Tensor norm_final(const torch::Tensor& h) const;

  // Linear sites of the blocks in forward order (q, k, v, o, gate, up, down per layer).
  std::vector<LinearSite*> block_sites();
  LinearSite& site(const std::string& name);

  void clear_attachments();
};

struct LoadOptions {
  torch::Dtype dtype = torch::kFloat32;
  torch::Device device = torch::kCPU;
};

// Builds a model from any checkpoint: each tensor is decoded in row chunks straight into the
// requested dtype and device, checked finite (an error names the tensor and file otherwise), and its
// source pages released as it goes, so loading peaks near the size of the loaded weights.
Model load_model(const Checkpoint& ckpt, const LoadOptions& opts = {});

// RMSNorm as Hugging Face computes it: statistics in float32 (float64 for a float64 input), result
// cast back, times the gain.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& gain, double eps);

// Inverse RoPE frequencies [head_dim/2] with the config's rope scaling applied (llama3, linear).
torch::Tensor rope_inverse_frequencies(const ModelConfig& c);

// Parses "fp32"/"float32", "bf16"/"bfloat16", "fp16"/"float16".
torch::Dtype parse_dtype(const std::string& s);
std::string dtype_string(torch::Dtype d);

}  // namespace toga
