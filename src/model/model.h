// The one forward pass of the Llama family (Llama 2/3, Mistral, Qwen2, Qwen3) in libtorch.
//
// Every linear layer is a named LinearSite. Calibration observers, fake quantizers, pruning masks
// and learned transforms attach to sites; they never edit or copy this forward. FP, fake-quantized,
// pruned and searched models are the same code with different attachments.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <set>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "io/model_config.h"
#include "quant/quantizer.h"

namespace toga::rt {
struct Linear;  // runtime/linear.h
}

namespace toga {

struct LinearSite;
using TensorFn = std::function<torch::Tensor(const torch::Tensor&)>;
using SiteObserver = std::function<void(const LinearSite&, const torch::Tensor&)>;

// Detaches its observer when destroyed (or on reset()), whatever else was attached since: observers
// are not a stack, and a method that forgets to clean up cannot remove somebody else's.
class ObserverHandle {
 public:
  ObserverHandle() = default;
  ObserverHandle(LinearSite* site, uint64_t id) : site_(site), id_(id) {}
  ObserverHandle(ObserverHandle&& o) noexcept : site_(o.site_), id_(o.id_) { o.site_ = nullptr; }
  ObserverHandle& operator=(ObserverHandle&& o) noexcept;
  ObserverHandle(const ObserverHandle&) = delete;
  ObserverHandle& operator=(const ObserverHandle&) = delete;
  ~ObserverHandle() { reset(); }
  void reset();

 private:
  LinearSite* site_ = nullptr;
  uint64_t id_ = 0;
};

// Dynamic per-token activation quantization of a site's gathered input: the last `salient` stored
// channels use `high`, the others `low` (Atom's layout after reordering).
struct ActivationQuant {
  QuantSpec low{16}, high{16};
  int64_t salient = 0;
  bool active() const { return low.quantized() || (salient > 0 && high.quantized()); }
};

// How a site computes y = x·Wᵀ + b once its input is gathered and transformed. The dense kernel is
// one implementation; packed integer kernels are others, chosen at load time from the storage format
// (linear_kernel.h). Nothing else in the forward knows which one runs.
class LinearKernel {
 public:
  virtual ~LinearKernel() = default;
  virtual std::string name() const = 0;
  // x [..., in] in stored column order (after gather, masks and activation quantization, unless
  // the kernel quantizes its input itself).
  virtual torch::Tensor apply(const LinearSite& site, const torch::Tensor& x) const = 0;
  // A packed integer kernel quantizes the activations itself (to codes, not fake-quantized floats):
  // the forward then leaves the site's activation quantizer to it.
  virtual bool quantizes_input() const { return false; }
  // The runtime linear this kernel runs (its input index empty: the site gathers), for the
  // libtorch-free runtime forward (runtime/transformer.h); null for the dense kernel.
  virtual std::shared_ptr<const rt::Linear> runtime_linear() const { return nullptr; }
};

// One linear layer of the model and the state its forward interprets. Attachments are data where
// they are decisions a checkpoint records (index lists, activation quantizer, masks, kernel) and
// closures only where a search needs an arbitrary differentiable function (custom_*).
//
// forward(x): observers(x) → gather in_index → in_mask → in_transform → activation quantizer → custom_input →
//             kernel(x, weight after custom_weight) → out_mask → custom_output → scatter out_index
struct LinearSite {
  std::string name;      // e.g. "layers.7.mlp.down_proj", "lm_head"
  torch::Tensor weight;  // [out, in]: columns in in_index order when in_index is defined
  torch::Tensor bias;    // [out] or undefined
  // int64 [in]: stored column j reads input channel in_index[j]. A permutation (Atom reordering,
  // GPTQ act-order), a subset (structured pruning: the block reads some residual channels), or both.
  torch::Tensor in_index;
  // int64 [out]: output row i is written to channel out_index[i] of an output `out_width` wide
  // (a block that writes a subset of the residual stream); other channels are zero.
  torch::Tensor out_index;
  int64_t out_width = 0;
  ActivationQuant act;
  torch::Tensor in_mask;   // [in] multiplies the gathered input (pruning masks; soft masks may require grad)
  // [in, in] orthogonal, online: the gathered input is multiplied by it before quantization (the
  // stored weight already holds W·R), so rotated activations are what gets quantized.
  torch::Tensor in_transform;
  torch::Tensor out_mask;  // [out] multiplies the output rows (before the scatter)
  std::shared_ptr<const LinearKernel> kernel;  // null = the dense kernel
  TensorFn custom_input, custom_weight, custom_output;

  torch::Tensor forward(const torch::Tensor& x) const;
  int64_t in_features() const { return weight.size(1); }
  int64_t out_features() const { return weight.size(0); }
  // Observers see the input as it arrives from upstream (before the gather): calibration statistics,
  // Hessians, captured activations. An observer may throw StopForward to end a calibration pass.
  ObserverHandle add_observer(SiteObserver fn);
  // Removes every attachment except the index lists (which describe how the weight is stored).
  void clear_attachments();

 private:
  friend class ObserverHandle;
  std::vector<std::pair<uint64_t, SiteObserver>> observers_;
  uint64_t next_observer_id_ = 1;
};

// Thrown by an observer to end a forward pass early once the inputs it needs are seen.
struct StopForward {};

struct Block {
  torch::Tensor attn_norm, mlp_norm;  // RMSNorm gains [hidden]
  torch::Tensor q_norm, k_norm;       // Qwen3 per-head RMSNorm gains [head_dim] (else undefined)
  LinearSite q, k, v, o, gate, up, down;
  // Structured pruning (DISP-LLM): residual channels the attention reads (q/k/v inputs) and o_proj
  // writes, the MLP reads (gate/up inputs) and down_proj writes; int64, sorted, undefined = all.
  // The sites' in_index / out_index hold these (composed with any reordering).
  torch::Tensor attn_in, attn_out, mlp_in, mlp_out;
  std::vector<LinearSite*> sites() { return {&q, &k, &v, &o, &gate, &up, &down}; }
  std::vector<const LinearSite*> sites() const { return {&q, &k, &v, &o, &gate, &up, &down}; }
  // Sites that read the same input (one calibration observation, one shared channel order).
  std::vector<std::vector<LinearSite*>> input_groups() { return {{&q, &k, &v}, {&o}, {&gate, &up}, {&down}}; }
};

// Per-layer widths as the weights say (heads from the q/k rows, intermediate from gate's rows).
LayerShape layer_shape(const Block& b, const ModelConfig& c);

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
  // What kv_transform does when it is the KV-cache quantizer (quant/apply_plan.h sets both), so the
  // runtime forward can store the cache as codes; 16 bits otherwise.
  QuantSpec kv_spec{16};

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
  std::vector<const LinearSite*> block_sites() const;
  LinearSite& site(const std::string& name);
  const LinearSite& site(const std::string& name) const;

  void clear_attachments();

  // Every tensor of the (unquantized) model under its Hugging Face name, weights in canonical column
  // order (any reordering undone), pruning index lists as int64: what a checkpoint of it holds. Save,
  // convert and later gradient all-reduce iterate this one list.
  // Names in `replaced` (weights a caller writes in another form, e.g. quantized) come back
  // undefined instead of as canonical-order copies.
  std::vector<std::pair<std::string, torch::Tensor>> named_tensors(const std::set<std::string>& replaced = {}) const;
  // The config with this model's per-layer shapes (layer_shapes set only when they differ).
  ModelConfig current_config() const;
};

struct LoadOptions {
  torch::Dtype dtype = torch::kFloat32;
  torch::Device device = torch::kCPU;
  // Quantized checkpoints: run the linears that can on the packed integer kernels
  // (quant/packed_kernel.h) instead of fake-quantized floats.
  bool packed_kernels = false;
  // Layer-sharded work (dist/layer_shards.h): only the block linears of layers [layer_begin,
  // layer_end) are read (layer_end < 0: to the last), and the embedding and lm_head only with
  // `embeddings`; the others become placeholders. Norms, biases and index lists are always read.
  int layer_begin = 0, layer_end = -1;
  bool embeddings = true;
};

// A tensor with a shape and no storage (a zero-stride view of one element): what a process holds
// for weights another process of a layer-sharded run has. Nothing may compute with it;
// Model::block_forward refuses blocks whose weights are placeholders.
torch::Tensor placeholder_tensor(at::IntArrayRef shape, torch::Dtype dtype, torch::Device device = torch::kCPU);
bool is_placeholder(const torch::Tensor& t);

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
