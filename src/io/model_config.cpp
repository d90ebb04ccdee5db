#include "io/model_config.h"

#include <map>

#include "util/error.h"

namespace toga {

const char* family_name(Family f) {
  switch (f) {
    case Family::Llama: return "llama";
    case Family::Mistral: return "mistral";
    case Family::Qwen2: return "qwen2";
    case Family::Qwen3: return "qwen3";
  }
  return "?";
}

namespace names {
std::string layer(int i, const std::string& suffix) { return fmt::format("model.layers.{}.{}", i, suffix); }
}  // namespace names

int64_t ModelConfig::num_parameters() const {
  const int64_t h = hidden_size, q = q_dim(), kv = kv_dim(), f = intermediate_size;
  int64_t per_layer = h * q + 2 * h * kv + q * h + 3 * h * f + 2 * h;
  if (attention_bias) per_layer += q + 2 * kv;
  if (qk_norm) per_layer += 2 * head_dim;
  int64_t total = per_layer * num_hidden_layers + int64_t(vocab_size) * h + h;
  if (!tie_word_embeddings) total += int64_t(vocab_size) * h;
  return total;
}

template <typename T>
static T get_or(const nlohmann::json& j, const char* key, T fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  return it->get<T>();
}

ModelConfig ModelConfig::from_hf_json(const nlohmann::json& j, const std::string& where) {
  ModelConfig c;
  try {
    if (!j.is_object()) fail_file(where, "config is not a JSON object");
    std::string arch;
    if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty())
      arch = j["architectures"][0].get<std::string>();
    const std::string model_type = get_or<std::string>(j, "model_type", "");
    if (arch.empty()) fail_file(where, "no 'architectures' entry (model_type '{}')", model_type);
    c.architecture = arch;
    if (arch == "LlamaForCausalLM") c.family = Family::Llama;
    else if (arch == "MistralForCausalLM") c.family = Family::Mistral;
    else if (arch == "Qwen2ForCausalLM") c.family = Family::Qwen2;
    else if (arch == "Qwen3ForCausalLM") c.family = Family::Qwen3;
    else
      fail_file(where, "unsupported architecture '{}' (supported: LlamaForCausalLM, MistralForCausalLM, "
                       "Qwen2ForCausalLM, Qwen3ForCausalLM)", arch);

    auto need_int = [&](const char* key) {
      if (!j.contains(key) || !j[key].is_number_integer()) fail_file(where, "missing or non-integer '{}'", key);
      return j[key].get<int>();
    };
    c.hidden_size = need_int("hidden_size");
    c.intermediate_size = need_int("intermediate_size");
    c.num_hidden_layers = need_int("num_hidden_layers");
    c.num_attention_heads = need_int("num_attention_heads");
    c.num_key_value_heads = get_or<int>(j, "num_key_value_heads", c.num_attention_heads);
    c.vocab_size = need_int("vocab_size");
    if (c.num_attention_heads <= 0) fail_file(where, "num_attention_heads must be positive");
    c.head_dim = get_or<int>(j, "head_dim", c.hidden_size / c.num_attention_heads);
    c.max_position_embeddings = get_or<int>(j, "max_position_embeddings", 2048);
    c.rms_norm_eps = get_or<double>(j, "rms_norm_eps", 1e-6);
    c.rope_theta = get_or<double>(j, "rope_theta", 10000.0);
    c.tie_word_embeddings = get_or<bool>(j, "tie_word_embeddings", false);
    c.torch_dtype = get_or<std::string>(j, "torch_dtype", get_or<std::string>(j, "dtype", "float32"));
    c.bos_token_id = get_or<int>(j, "bos_token_id", -1);
    if (j.contains("eos_token_id") && !j["eos_token_id"].is_null()) {
      if (j["eos_token_id"].is_array()) c.eos_token_ids = j["eos_token_id"].get<std::vector<int>>();
      else c.eos_token_ids = {j["eos_token_id"].get<int>()};
    }
    switch (c.family) {
      case Family::Llama:
        c.attention_bias = get_or<bool>(j, "attention_bias", false);
        c.o_proj_bias = c.attention_bias;
        c.mlp_bias = get_or<bool>(j, "mlp_bias", false);
        break;
      case Family::Mistral:
        c.sliding_window = get_or<int>(j, "sliding_window", 0);
        break;
      case Family::Qwen2:
        c.attention_bias = true;
        if (get_or<bool>(j, "use_sliding_window", false)) c.sliding_window = get_or<int>(j, "sliding_window", 0);
        break;
      case Family::Qwen3:
        c.attention_bias = get_or<bool>(j, "attention_bias", false);
        c.o_proj_bias = c.attention_bias;
        c.qk_norm = true;
        if (get_or<bool>(j, "use_sliding_window", false)) c.sliding_window = get_or<int>(j, "sliding_window", 0);
        break;
    }
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
      const auto& r = j["rope_scaling"];
      std::string type = get_or<std::string>(r, "rope_type", get_or<std::string>(r, "type", ""));
      if (type == "llama3") {
        c.rope_scaling.type = "llama3";
        c.rope_scaling.factor = r.at("factor").get<double>();
        c.rope_scaling.low_freq_factor = get_or<double>(r, "low_freq_factor", 1.0);
        c.rope_scaling.high_freq_factor = get_or<double>(r, "high_freq_factor", 4.0);
        c.rope_scaling.original_max_position_embeddings =
            get_or<int>(r, "original_max_position_embeddings", 8192);
      } else if (type == "linear") {
        c.rope_scaling.type = "linear";
        c.rope_scaling.factor = r.at("factor").get<double>();
      } else if (type == "default" || type.empty()) {
        // no scaling
      } else {
        fail_file(where, "unsupported rope_scaling type '{}' (supported: llama3, linear)", type);
      }
    }
  } catch (const nlohmann::json::exception& e) {
    fail_file(where, "malformed config: {}", e.what());
  }
  c.validate(where);
  return c;
}

void ModelConfig::validate(const std::string& where) const {
  auto positive = [&](int v, const char* what) {
    if (v <= 0) fail_file(where, "{} must be positive, got {}", what, v);
  };
  positive(hidden_size, "hidden_size");
  positive(intermediate_size, "intermediate_size");
  positive(num_hidden_layers, "num_hidden_layers");
  positive(num_attention_heads, "num_attention_heads");
  positive(num_key_value_heads, "num_key_value_heads");
  positive(head_dim, "head_dim");
  positive(vocab_size, "vocab_size");
  if (num_attention_heads % num_key_value_heads != 0)
    fail_file(where, "num_attention_heads {} is not a multiple of num_key_value_heads {}", num_attention_heads,
              num_key_value_heads);
  if (head_dim % 2 != 0) fail_file(where, "head_dim {} must be even for RoPE", head_dim);
  if (!(rms_norm_eps > 0)) fail_file(where, "rms_norm_eps must be positive");
  if (!(rope_theta > 0)) fail_file(where, "rope_theta must be positive");
}

nlohmann::json ModelConfig::to_hf_json() const {
  nlohmann::json j;
  j["architectures"] = {architecture};
  j["model_type"] = family_name(family);
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["vocab_size"] = vocab_size;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["hidden_act"] = "silu";
  j["torch_dtype"] = torch_dtype;
  if (family == Family::Llama || family == Family::Qwen3) j["attention_bias"] = attention_bias;
  if (family == Family::Llama) j["mlp_bias"] = mlp_bias;
  if (family == Family::Mistral) j["sliding_window"] = sliding_window > 0 ? nlohmann::json(sliding_window) : nlohmann::json();
  if ((family == Family::Qwen2 || family == Family::Qwen3)) {
    j["use_sliding_window"] = sliding_window > 0;
    if (sliding_window > 0) j["sliding_window"] = sliding_window;
  }
  if (bos_token_id >= 0) j["bos_token_id"] = bos_token_id;
  if (eos_token_ids.size() == 1) j["eos_token_id"] = eos_token_ids[0];
  else if (!eos_token_ids.empty()) j["eos_token_id"] = eos_token_ids;
  if (rope_scaling.type == "llama3") {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", rope_scaling.factor},
                         {"low_freq_factor", rope_scaling.low_freq_factor},
                         {"high_freq_factor", rope_scaling.high_freq_factor},
                         {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings}};
  } else if (rope_scaling.type == "linear") {
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", rope_scaling.factor}};
  }
  return j;
}

}  // namespace toga

#include <cstring>
#include <set>

#include "io/tensor_source.h"

namespace toga {

std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const ModelConfig& c) {
  const int64_t h = c.hidden_size, q = c.q_dim(), kv = c.kv_dim(), f = c.intermediate_size, v = c.vocab_size;
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  out.push_back({names::embed(), {v, h}});
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    auto L = [&](const char* s) { return names::layer(i, s); };
    out.push_back({L("input_layernorm.weight"), {h}});
    out.push_back({L("self_attn.q_proj.weight"), {q, h}});
    out.push_back({L("self_attn.k_proj.weight"), {kv, h}});
    out.push_back({L("self_attn.v_proj.weight"), {kv, h}});
    out.push_back({L("self_attn.o_proj.weight"), {h, q}});
    if (c.attention_bias) {
      out.push_back({L("self_attn.q_proj.bias"), {q}});
      out.push_back({L("self_attn.k_proj.bias"), {kv}});
      out.push_back({L("self_attn.v_proj.bias"), {kv}});
    }
    if (c.o_proj_bias) out.push_back({L("self_attn.o_proj.bias"), {h}});
    if (c.qk_norm) {
      out.push_back({L("self_attn.q_norm.weight"), {c.head_dim}});
      out.push_back({L("self_attn.k_norm.weight"), {c.head_dim}});
    }
    out.push_back({L("post_attention_layernorm.weight"), {h}});
    out.push_back({L("mlp.gate_proj.weight"), {f, h}});
    out.push_back({L("mlp.up_proj.weight"), {f, h}});
    out.push_back({L("mlp.down_proj.weight"), {h, f}});
    if (c.mlp_bias) {
      out.push_back({L("mlp.gate_proj.bias"), {f}});
      out.push_back({L("mlp.up_proj.bias"), {f}});
      out.push_back({L("mlp.down_proj.bias"), {h}});
    }
  }
  out.push_back({names::final_norm(), {h}});
  if (!c.tie_word_embeddings) out.push_back({names::lm_head(), {v, h}});
  return out;
}

void check_tensors_match_config(const TensorSource& src, const ModelConfig& c) {
  std::map<std::string, TensorInfo> have;
  for (auto& t : src.tensors()) have[t.name] = t;
  std::set<std::string> expected;
  for (const auto& [name, shape] : expected_tensors(c)) {
    expected.insert(name);
    auto it = have.find(name);
    if (it == have.end()) fail_file(src.description(), "missing tensor '{}' required by the config", name);
    if (it->second.shape != shape)
      fail_file(it->second.file.empty() ? src.description() : it->second.file,
                "tensor '{}' has shape {} but the config requires {}", name, shape_str(it->second.shape),
                shape_str(shape));
    const DType d = it->second.dtype;
    if (d == DType::I8 || d == DType::U8 || d == DType::I16 || d == DType::I32 || d == DType::I64 ||
        d == DType::BOOL)
      fail_file(it->second.file.empty() ? src.description() : it->second.file,
                "tensor '{}' has integer dtype {}, expected a floating-point weight", name, dtype_name(d));
  }
  for (const auto& [name, info] : have) {
    // Tied checkpoints may still carry lm_head.weight; rotary caches are derived, not weights.
    if (expected.count(name) || name == names::lm_head() || name.find("rotary_emb") != std::string::npos) continue;
    fail_file(info.file.empty() ? src.description() : info.file,
              "unexpected tensor '{}' (not part of a {} model with this config)", name, c.architecture);
  }
}

void permute_rows_adjacent_to_halves(float* w, int64_t n_heads, int64_t head_dim, int64_t cols) {
  // Adjacent order stores row 2i+j (j in {0,1}) of a head at position 2i+j; HF wants it at j*d/2+i.
  std::vector<float> head(static_cast<size_t>(head_dim * cols));
  const int64_t half = head_dim / 2;
  for (int64_t hd = 0; hd < n_heads; ++hd) {
    float* base = w + hd * head_dim * cols;
    std::memcpy(head.data(), base, head.size() * sizeof(float));
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j)
        std::memcpy(base + (j * half + i) * cols, head.data() + (2 * i + j) * cols, cols * sizeof(float));
  }
}

}  // namespace toga
