// Shared by the benchmarks: real model shapes with procedurally generated weights, the FLOP counts
// the throughput numbers are measured against, and the machine state recorded beside each number.
#pragma once

#include <malloc.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "io/model_config.h"
#include "io/tensor_source.h"

namespace toga::bench {

// Llama-3.2-1B as published (config.json of meta-llama/Llama-3.2-1B).
inline ModelConfig llama32_1b_config() {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.family = Family::Llama;
  c.hidden_size = 2048;
  c.intermediate_size = 8192;
  c.num_hidden_layers = 16;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 8;
  c.head_dim = 64;
  c.vocab_size = 128256;
  c.max_position_embeddings = 131072;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 500000.0;
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 32.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 8192;
  c.tie_word_embeddings = true;
  c.bos_token_id = 128000;
  c.eos_token_ids = {128001};
  c.torch_dtype = "bfloat16";
  return c;
}

// A counter-based generator (splitmix64 finaliser over seed + index): any element, in any order
// and on any thread, without state, so tensors of a billion elements fill in parallel.
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

inline uint64_t name_seed(const std::string& s, uint64_t seed) {
  uint64_t h = 1469598103934665603ULL ^ seed;  // FNV-1a
  for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ULL;
  return mix64(h);
}

// Unit-variance uniform value (uniform on [-1, 1) has variance 1/3).
inline float unit_uniform(uint64_t seed, uint64_t i) {
  const uint64_t r = mix64(seed + (i + 1) * 0x9e3779b97f4a7c15ULL);
  return (static_cast<float>(r >> 40) * (1.0f / 8388608.0f) - 1.0f) * 1.7320508f;
}

// Weights of the right statistics for the activations to stay in range through every layer:
// linear weights ~ 1/sqrt(fan_in), norm gains near 1, embeddings unit variance.
struct WeightLaw {
  float scale, offset;
};
inline WeightLaw weight_law(const std::string& name, const std::vector<int64_t>& shape) {
  if (name.find("norm") != std::string::npos) return {0.05f, 1.0f};
  if (name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0) return {0.02f, 0.0f};
  if (name == names::embed()) return {1.0f, 0.0f};
  const double fan_in = shape.size() == 2 ? static_cast<double>(shape[1]) : 1.0;
  return {static_cast<float>(1.0 / std::sqrt(fan_in)), 0.0f};
}

// Every tensor of a config, generated on read: loading a 1B-parameter model through load_model
// needs no second copy of its weights in memory.
class RandomTensorSource : public TensorSource {
 public:
  explicit RandomTensorSource(const ModelConfig& c, uint64_t seed = 1) : seed_(seed) {
    for (const auto& [name, shape] : expected_tensors(c)) {
      TensorInfo t{name, DType::F32, shape, ""};
      infos_.push_back(t);
      index_[name] = t;
    }
  }
  std::vector<TensorInfo> tensors() const override { return infos_; }
  void read_f32(const std::string& name, float* dst) const override {
    const TensorInfo& t = find(name);
    fill(t, 0, t.numel(), dst);
  }
  void read_f32_rows(const std::string& name, int64_t row_begin, int64_t n_rows, float* dst) const override {
    const TensorInfo& t = find(name);
    const int64_t cols = tensor_row_length(t.shape);
    fill(t, row_begin * cols, n_rows * cols, dst);
  }
  bool row_reads(const std::string& /*name*/) const override { return true; }
  std::string description() const override { return "<random>"; }

  // Elements [begin, begin + n) of the tensor in row-major order.
  void fill(const TensorInfo& t, int64_t begin, int64_t n, float* dst) const {
    const uint64_t s = name_seed(t.name, seed_);
    const WeightLaw law = weight_law(t.name, t.shape);
#pragma omp parallel for schedule(static) if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) dst[i] = law.offset + law.scale * unit_uniform(s, static_cast<uint64_t>(begin + i));
  }
  const TensorInfo& find(const std::string& name) const { return index_.at(name); }

 private:
  uint64_t seed_;
  std::vector<TensorInfo> infos_;
  std::map<std::string, TensorInfo> index_;
};

// Weights multiplied per token: every linear layer plus lm_head (tied or not, it is a matmul).
inline double linear_params(const ModelConfig& c) {
  const double h = c.hidden_size, q = c.q_dim(), kv = c.kv_dim(), f = c.intermediate_size;
  return c.num_hidden_layers * (h * q + 2 * h * kv + q * h + 3 * h * f) + double(c.vocab_size) * h;
}

// Keys one query at position p (0-based) attends to.
inline double keys_seen(const ModelConfig& c, int64_t p) {
  const double k = static_cast<double>(p + 1);
  return c.sliding_window > 0 ? std::min<double>(k, c.sliding_window) : k;
}

// Useful FLOPs: 2 per multiply-add of the linears, and per layer QK^T plus PV over the causally
// visible keys only (2 matmuls x 2 FLOPs x heads x head_dim per query-key pair). Norms, RoPE,
// softmax and the masked-out part of the score blocks the forward also computes are not counted.
inline double forward_flops(const ModelConfig& c, int64_t start, int64_t tokens) {
  double pairs = 0;
  for (int64_t p = start; p < start + tokens; ++p) pairs += keys_seen(c, p);
  return 2.0 * linear_params(c) * static_cast<double>(tokens) +
         c.num_hidden_layers * 4.0 * c.num_attention_heads * c.head_dim * pairs;
}

// The 1-minute load average: the machine is shared, so every number is reported beside it.
inline double load_average() {
  std::ifstream in("/proc/loadavg");
  double l = -1;
  in >> l;
  return l;
}

// The CLI's allocator settings (src/cli/main.cpp), so that benchmarks see the allocator toga runs
// with: freed temporaries below 32 MB stay in the heap for reuse instead of page-faulting back in.
inline void use_cli_allocator_settings() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

// The shared data directory: $TOGA_SHARED, else ../shared beside the checkout (the runner's cwd).
inline std::string shared_path(const std::string& rel) {
  const char* env = std::getenv("TOGA_SHARED");
  return std::string(env ? env : "../shared") + "/" + rel;
}
inline std::string smollm2_path() {
  return shared_path("data/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
}

}  // namespace toga::bench
