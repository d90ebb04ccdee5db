// The architecture description every checkpoint format is mapped to: the fields of a Hugging Face
// config.json for the Llama family (Llama 2/3, Mistral, Qwen2, Qwen3).
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace toga {

enum class Family { Llama, Mistral, Qwen2, Qwen3 };

struct RopeScaling {
  std::string type = "none";  // "none" | "llama3" | "linear"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int original_max_position_embeddings = 8192;
};

// One block's widths when blocks differ (structured pruning). attn_in..mlp_out count the residual
// channels a block reads and writes; fewer than hidden_size means the checkpoint stores the index
// list ("model.layers.N.self_attn.input_index", ".output_index", "mlp.input_index", ".output_index").
struct LayerShape {
  int num_attention_heads = 0;
  int num_key_value_heads = 0;
  int intermediate_size = 0;
  int attn_in = 0, attn_out = 0, mlp_in = 0, mlp_out = 0;
  bool operator==(const LayerShape& o) const {
    return num_attention_heads == o.num_attention_heads && num_key_value_heads == o.num_key_value_heads &&
           intermediate_size == o.intermediate_size && attn_in == o.attn_in && attn_out == o.attn_out &&
           mlp_in == o.mlp_in && mlp_out == o.mlp_out;
  }
  bool operator!=(const LayerShape& o) const { return !(*this == o); }
};

struct ModelConfig {
  std::string architecture = "LlamaForCausalLM";
  Family family = Family::Llama;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;
  int head_dim = 0;  // explicit (Qwen3) or hidden_size / num_attention_heads
  int vocab_size = 0;
  int max_position_embeddings = 2048;
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v (+o for Llama) biases
  bool o_proj_bias = false;     // Llama's attention_bias also covers o_proj; Qwen2's does not
  bool mlp_bias = false;
  bool qk_norm = false;          // Qwen3: per-head RMSNorm of q and k before RoPE
  int sliding_window = 0;        // 0 = none (Mistral sets it)
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;
  std::string torch_dtype = "float32";
  // Empty when every block has the config's widths; else one entry per layer (config.json
  // "toga_layer_shapes"; toga's own extension, written only for pruned models).
  std::vector<LayerShape> layer_shapes;

  LayerShape uniform_layer_shape() const;
  LayerShape layer(int i) const { return layer_shapes.empty() ? uniform_layer_shape() : layer_shapes.at(i); }

  int q_dim() const { return num_attention_heads * head_dim; }
  int kv_dim() const { return num_key_value_heads * head_dim; }
  int64_t num_parameters() const;

  // Parses an HF config.json object; `where` names the file in errors. Unsupported architectures
  // and inconsistent values are clear errors.
  static ModelConfig from_hf_json(const nlohmann::json& j, const std::string& where);
  nlohmann::json to_hf_json() const;
  void validate(const std::string& where) const;
};

const char* family_name(Family f);

// HF tensor names of the Llama family.
namespace names {
std::string layer(int i, const std::string& suffix);  // "model.layers.{i}.{suffix}"
inline const char* embed() { return "model.embed_tokens.weight"; }
inline const char* final_norm() { return "model.norm.weight"; }
inline const char* lm_head() { return "lm_head.weight"; }
}  // namespace names

}  // namespace toga

namespace toga {

// Every tensor a checkpoint of this configuration must hold, with its HF shape (per-layer shapes
// included; pruning index lists are int32/int64, everything else floating point). Loaders check a
// file against this before reading any data.
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const ModelConfig& c);

// Checks presence and shapes of all expected tensors (and reports unexpected extra weights).
class TensorSource;
// Names of pruning index lists ("...input_index", "...output_index"): integer tensors.
bool is_index_tensor(const std::string& name);
void check_tensors_match_config(const TensorSource& src, const ModelConfig& c);

// llama.cpp's GGUF converter and Meta/llama2.c checkpoints order each q/k head's rows so that RoPE
// rotates adjacent pairs (2i, 2i+1); the HF layout rotates the halves (i, i + d/2). This moves the
// rows of a [n_heads * head_dim, cols] row-major matrix (or bias vector, cols = 1) from the
// adjacent-pair order to the HF order, in place.
void permute_rows_adjacent_to_halves(float* w, int64_t n_heads, int64_t head_dim, int64_t cols);

}  // namespace toga
