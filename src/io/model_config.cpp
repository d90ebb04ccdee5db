#include "io/model_config.h"

#include <map>
#include <optional>
#include <set>

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
  int64_t total = 0;
  for (const auto& [name, shape] : expected_tensors(*this)) {
    if (is_index_tensor(name)) continue;
    int64_t n = 1;
    for (auto d : shape) n *= d;
    total += n;
  }
  return total;
}

template <typename T>
static T get_or(const nlohmann::json& j, const char* key, T fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  return it->get<T>();
}

static std::vector<LayerShape> parse_layer_shapes(const nlohmann::json& j, const std::string& where) {
  std::vector<LayerShape> out;
  if (!j.contains("toga_layer_shapes") || j["toga_layer_shapes"].is_null()) return out;
  try {
    for (const auto& e : j.at("toga_layer_shapes")) {
      LayerShape s;
      s.num_attention_heads = e.at("num_attention_heads").get<int>();
      s.num_key_value_heads = e.at("num_key_value_heads").get<int>();
      s.intermediate_size = e.at("intermediate_size").get<int>();
      s.attn_in = e.at("attn_in").get<int>();
      s.attn_out = e.at("attn_out").get<int>();
      s.mlp_in = e.at("mlp_in").get<int>();
      s.mlp_out = e.at("mlp_out").get<int>();
      out.push_back(s);
    }
  } catch (const nlohmann::json::exception& e) {
    fail_file(where, "malformed toga_layer_shapes: {}", e.what());
  }
  return out;
}

namespace {

// One RoPE description: transformers v5's `rope_parameters` or the older `rope_scaling`.
struct RopeDict {
  std::optional<double> theta;
  std::optional<int> original_max_position_embeddings;
  RopeScaling scaling;
};

std::optional<double> optional_double(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  return it->get<double>();
}

std::string describe(const RopeDict& d) {
  const auto& s = d.scaling;
  std::string out = fmt::format("rope_type {}", s.type == "none" ? "default" : s.type);
  if (s.type != "none") out += fmt::format(", factor {}", s.factor);
  if (s.type == "llama3")
    out += fmt::format(", low_freq_factor {}, high_freq_factor {}", s.low_freq_factor, s.high_freq_factor);
  if (d.original_max_position_embeddings)
    out += fmt::format(", original_max_position_embeddings {}", *d.original_max_position_embeddings);
  if (d.theta) out += fmt::format(", rope_theta {}", *d.theta);
  return out;
}

// Reads one RoPE dictionary. Any key outside what toga computes is an error rather than ignored:
// transformers applies yarn's attention_factor, mrope sections or a partial rotary dimension in the
// forward, so skipping them would run a different model without a word.
RopeDict parse_rope_dict(const nlohmann::json& r, const char* key, const std::string& where) {
  if (!r.is_object()) fail_file(where, "'{}' is not a JSON object", key);
  static const std::set<std::string> known = {"rope_type", "type", "rope_theta", "partial_rotary_factor", "factor",
                                              "low_freq_factor", "high_freq_factor",
                                              "original_max_position_embeddings"};
  for (const auto& [name, value] : r.items()) {
    if (value.is_object())  // v5 nests one dictionary per layer type for models that mix RoPE settings
      fail_file(where, "per-layer-type '{}' ('{}') are not supported", key, name);
    if (!known.count(name) && !value.is_null())
      fail_file(where, "unsupported '{}' entry '{}' (toga implements rope_theta and the default, linear and llama3 "
                       "rope types)", key, name);
  }
  const std::string rope_type = get_or<std::string>(r, "rope_type", ""), type = get_or<std::string>(r, "type", "");
  if (!rope_type.empty() && !type.empty() && rope_type != type)
    fail_file(where, "'{}' has rope_type '{}' but type '{}'", key, rope_type, type);
  const std::string t = rope_type.empty() ? (type.empty() ? "default" : type) : rope_type;
  const double partial = get_or<double>(r, "partial_rotary_factor", 1.0);
  if (partial != 1.0)
    fail_file(where, "'{}' partial_rotary_factor {} is not supported (toga rotates the whole head)", key, partial);

  RopeDict d;
  d.theta = optional_double(r, "rope_theta");
  if (r.contains("original_max_position_embeddings") && !r["original_max_position_embeddings"].is_null())
    d.original_max_position_embeddings = r["original_max_position_embeddings"].get<int>();
  auto need = [&](const char* name) {
    auto v = optional_double(r, name);
    if (!v) fail_file(where, "'{}' of rope_type '{}' has no '{}'", key, t, name);
    if (!(*v > 0)) fail_file(where, "'{}' {} must be positive, got {}", key, name, *v);
    return *v;
  };
  if (t == "default") {
    // no scaling
  } else if (t == "linear") {
    d.scaling.type = "linear";
    d.scaling.factor = need("factor");
  } else if (t == "llama3") {
    d.scaling.type = "llama3";
    d.scaling.factor = need("factor");
    d.scaling.low_freq_factor = need("low_freq_factor");
    d.scaling.high_freq_factor = need("high_freq_factor");
    if (!(d.scaling.high_freq_factor > d.scaling.low_freq_factor))
      fail_file(where, "'{}' high_freq_factor {} must exceed low_freq_factor {}", key, d.scaling.high_freq_factor,
                d.scaling.low_freq_factor);
  } else {
    fail_file(where, "unsupported '{}' rope_type '{}' (supported: default, linear, llama3)", key, t);
  }
  return d;
}

bool same_rope(const RopeDict& a, const RopeDict& b) {
  const auto& x = a.scaling;
  const auto& y = b.scaling;
  if (x.type != y.type) return false;
  if (a.theta && b.theta && *a.theta != *b.theta) return false;
  if (x.type == "none") return true;
  if (x.factor != y.factor) return false;
  if (x.type == "linear") return true;
  return x.low_freq_factor == y.low_freq_factor && x.high_freq_factor == y.high_freq_factor &&
         (!a.original_max_position_embeddings || !b.original_max_position_embeddings ||
          *a.original_max_position_embeddings == *b.original_max_position_embeddings);
}

// transformers v5 writes every RoPE setting, theta included, into `rope_parameters`; v4 wrote
// `rope_theta` at the top level and the scaling in `rope_scaling`. v5 still reads the old layout,
// so checkpoints of either kind exist, and edited ones with both. Where two places set the same
// value they must agree: which one the author meant is not ours to guess.
void parse_rope(const nlohmann::json& j, ModelConfig& c, const std::string& where) {
  const double partial = get_or<double>(j, "partial_rotary_factor", 1.0);
  if (partial != 1.0)
    fail_file(where, "partial_rotary_factor {} is not supported (toga rotates the whole head)", partial);
  std::optional<RopeDict> params, scaling;
  if (j.contains("rope_parameters") && !j["rope_parameters"].is_null())
    params = parse_rope_dict(j["rope_parameters"], "rope_parameters", where);
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
    scaling = parse_rope_dict(j["rope_scaling"], "rope_scaling", where);
  if (params && scaling && !same_rope(*params, *scaling))
    fail_file(where, "'rope_parameters' ({}) and 'rope_scaling' ({}) disagree", describe(*params),
              describe(*scaling));
  RopeDict d = params ? *params : scaling ? *scaling : RopeDict{};
  if (params && scaling) {
    if (!d.theta) d.theta = scaling->theta;
    if (!d.original_max_position_embeddings)
      d.original_max_position_embeddings = scaling->original_max_position_embeddings;
  }

  const auto top_theta = optional_double(j, "rope_theta");
  if (d.theta && top_theta && *d.theta != *top_theta)
    fail_file(where, "'rope_theta' {} disagrees with the {} rope_theta {}", *top_theta,
              params ? "rope_parameters" : "rope_scaling", *d.theta);
  c.rope_theta = d.theta ? *d.theta : top_theta ? *top_theta : 10000.0;
  c.rope_scaling = d.scaling;

  if (c.rope_scaling.type == "llama3") {
    // As transformers v5 does: the pretraining length may sit beside the scaling or at the top
    // level, and falls back to max_position_embeddings.
    std::optional<int> top;
    if (j.contains("original_max_position_embeddings") && !j["original_max_position_embeddings"].is_null())
      top = j["original_max_position_embeddings"].get<int>();
    auto& nested = d.original_max_position_embeddings;
    if (nested && top && *nested != *top)
      fail_file(where, "'original_max_position_embeddings' {} disagrees with the rope scaling's {}", *top, *nested);
    if (!nested) nested = top;
    if (!nested && j.contains("max_position_embeddings") && !j["max_position_embeddings"].is_null())
      nested = j["max_position_embeddings"].get<int>();
    if (!nested) fail_file(where, "llama3 rope scaling without original_max_position_embeddings");
    if (*nested <= 0) fail_file(where, "original_max_position_embeddings must be positive, got {}", *nested);
    c.rope_scaling.original_max_position_embeddings = *nested;
  }
}

// The forward applies one attention kind to every layer: causal, or causal within `sliding_window`.
// transformers decides per layer: `layer_types` when written (v5 always writes it for Qwen2/Qwen3),
// otherwise, for Qwen2/Qwen3, sliding from layer `max_window_layers` on once `use_sliding_window`
// is set. Mistral's model reads `sliding_window` alone and applies it everywhere. A mix of kinds,
// or a kind toga would not run, is an error.
void parse_attention_layers(const nlohmann::json& j, ModelConfig& c, const std::string& where) {
  const int n = c.num_hidden_layers;
  if (n <= 0) return;  // validate() names the problem
  // transformers' own default where the key is missing; null means no window.
  std::optional<int> window = 4096;
  if (j.contains("sliding_window")) {
    if (j["sliding_window"].is_null()) window.reset();
    else window = j["sliding_window"].get<int>();
  }

  std::vector<std::string> kinds;
  if (j.contains("layer_types") && !j["layer_types"].is_null()) {
    const auto& lt = j["layer_types"];
    if (!lt.is_array() || static_cast<int>(lt.size()) != n)
      fail_file(where, "'layer_types' must list one entry per layer ({})", n);
    for (const auto& k : lt) kinds.push_back(k.get<std::string>());
  }

  if (c.family == Family::Qwen2 || c.family == Family::Qwen3) {
    if (!get_or<bool>(j, "use_sliding_window", false)) window.reset();
    if (kinds.empty()) {
      const int max_window_layers = get_or<int>(j, "max_window_layers", 28);
      for (int i = 0; i < n; ++i)
        kinds.push_back(window && i >= max_window_layers ? "sliding_attention" : "full_attention");
    }
    for (int i = 0; i < n; ++i) {
      if (kinds[i] != "full_attention" && kinds[i] != "sliding_attention")
        fail_file(where, "unsupported layer type '{}' in layer {} of 'layer_types'", kinds[i], i);
      if (kinds[i] != kinds[0])
        fail_file(where, "layer {} is {} but layer 0 is {}: per-layer sliding-window attention is not supported", i,
                  kinds[i], kinds[0]);
    }
    if (kinds[0] == "sliding_attention") {
      if (!window) fail_file(where, "'layer_types' has sliding_attention layers but no sliding window is in use");
      if (*window <= 0) fail_file(where, "sliding_window must be positive, got {}", *window);
      c.sliding_window = *window;
    }
  } else if (c.family == Family::Mistral) {
    c.sliding_window = window.value_or(0);
  }
  if (c.sliding_window < 0) fail_file(where, "sliding_window must be positive, got {}", c.sliding_window);

  // For Llama and Mistral transformers ignores `layer_types`; one that says otherwise than the
  // forward describes another model.
  const std::string runs = c.sliding_window > 0 ? "sliding_attention" : "full_attention";
  for (int i = 0; i < static_cast<int>(kinds.size()); ++i)
    if (kinds[i] != runs)
      fail_file(where, "layer {} is '{}' in 'layer_types', but a {} model with this config runs every layer as {}", i,
                kinds[i], family_name(c.family), runs);
}

}  // namespace

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
        break;
      case Family::Qwen2:
        c.attention_bias = true;
        break;
      case Family::Qwen3:
        c.attention_bias = get_or<bool>(j, "attention_bias", false);
        c.o_proj_bias = c.attention_bias;
        c.qk_norm = true;
        break;
    }
    // transformers maps both names to SiLU; the forward has no other activation.
    const std::string act = get_or<std::string>(j, "hidden_act", "silu");
    if (act != "silu" && act != "swish") fail_file(where, "unsupported hidden_act '{}' (supported: silu)", act);
    parse_attention_layers(j, c, where);
    parse_rope(j, c, where);
  } catch (const nlohmann::json::exception& e) {
    fail_file(where, "malformed config: {}", e.what());
  }
  c.layer_shapes = parse_layer_shapes(j, where);
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
  if (!layer_shapes.empty() && int(layer_shapes.size()) != num_hidden_layers)
    fail_file(where, "toga_layer_shapes has {} entries for {} layers", layer_shapes.size(), num_hidden_layers);
  for (size_t i = 0; i < layer_shapes.size(); ++i) {
    const LayerShape& s = layer_shapes[i];
    auto in_range = [&](int v, int lo, int hi, const char* what) {
      if (v < lo || v > hi) fail_file(where, "toga_layer_shapes[{}].{} = {} is outside [{}, {}]", i, what, v, lo, hi);
    };
    in_range(s.num_key_value_heads, 1, num_key_value_heads, "num_key_value_heads");
    in_range(s.num_attention_heads, 1, num_attention_heads, "num_attention_heads");
    if (s.num_attention_heads % s.num_key_value_heads != 0)
      fail_file(where, "toga_layer_shapes[{}]: {} heads are not a multiple of {} KV heads", i, s.num_attention_heads,
                s.num_key_value_heads);
    in_range(s.intermediate_size, 1, intermediate_size, "intermediate_size");
    in_range(s.attn_in, 1, hidden_size, "attn_in");
    in_range(s.attn_out, 1, hidden_size, "attn_out");
    in_range(s.mlp_in, 1, hidden_size, "mlp_in");
    in_range(s.mlp_out, 1, hidden_size, "mlp_out");
  }
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
  // RoPE is written in the v4 layout (`rope_theta`, `rope_scaling`) on purpose: transformers v5
  // converts it into `rope_parameters` on load, while v4 and the tools built on it do not know
  // `rope_parameters` and would silently fall back to theta 10000 without scaling.
  j["rope_theta"] = rope_theta;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["hidden_act"] = "silu";
  j["torch_dtype"] = torch_dtype;
  if (family == Family::Llama || family == Family::Qwen3) j["attention_bias"] = attention_bias;
  if (family == Family::Llama) j["mlp_bias"] = mlp_bias;
  if (family == Family::Mistral) j["sliding_window"] = sliding_window > 0 ? nlohmann::json(sliding_window) : nlohmann::json();
  if ((family == Family::Qwen2 || family == Family::Qwen3)) {
    j["use_sliding_window"] = sliding_window > 0;
    if (sliding_window > 0) {
      j["sliding_window"] = sliding_window;
      j["max_window_layers"] = 0;  // the window covers every layer, as in toga's forward (default: from 28 on)
    }
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
  if (!layer_shapes.empty()) {
    nlohmann::json shapes = nlohmann::json::array();
    for (const auto& s : layer_shapes)
      shapes.push_back({{"num_attention_heads", s.num_attention_heads}, {"num_key_value_heads", s.num_key_value_heads},
                        {"intermediate_size", s.intermediate_size}, {"attn_in", s.attn_in}, {"attn_out", s.attn_out},
                        {"mlp_in", s.mlp_in}, {"mlp_out", s.mlp_out}});
    j["toga_layer_shapes"] = shapes;
  }
  return j;
}

}  // namespace toga

#include <cstring>

#include "io/tensor_source.h"

namespace toga {

LayerShape ModelConfig::uniform_layer_shape() const {
  return {num_attention_heads, num_key_value_heads, intermediate_size, hidden_size, hidden_size, hidden_size,
          hidden_size};
}

bool is_index_tensor(const std::string& name) {
  auto ends = [&](const std::string& s) {
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  return ends(".input_index") || ends(".output_index");
}

std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const ModelConfig& c) {
  const int64_t h = c.hidden_size, v = c.vocab_size, d = c.head_dim;
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  out.push_back({names::embed(), {v, h}});
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const LayerShape s = c.layer(i);
    const int64_t q = int64_t(s.num_attention_heads) * d, kv = int64_t(s.num_key_value_heads) * d,
                  f = s.intermediate_size;
    auto L = [&](const char* n) { return names::layer(i, n); };
    out.push_back({L("input_layernorm.weight"), {h}});
    if (s.attn_in < h) out.push_back({L("self_attn.input_index"), {s.attn_in}});
    if (s.attn_out < h) out.push_back({L("self_attn.output_index"), {s.attn_out}});
    out.push_back({L("self_attn.q_proj.weight"), {q, s.attn_in}});
    out.push_back({L("self_attn.k_proj.weight"), {kv, s.attn_in}});
    out.push_back({L("self_attn.v_proj.weight"), {kv, s.attn_in}});
    out.push_back({L("self_attn.o_proj.weight"), {s.attn_out, q}});
    if (c.attention_bias) {
      out.push_back({L("self_attn.q_proj.bias"), {q}});
      out.push_back({L("self_attn.k_proj.bias"), {kv}});
      out.push_back({L("self_attn.v_proj.bias"), {kv}});
    }
    if (c.o_proj_bias) out.push_back({L("self_attn.o_proj.bias"), {s.attn_out}});
    if (c.qk_norm) {
      out.push_back({L("self_attn.q_norm.weight"), {d}});
      out.push_back({L("self_attn.k_norm.weight"), {d}});
    }
    out.push_back({L("post_attention_layernorm.weight"), {h}});
    if (s.mlp_in < h) out.push_back({L("mlp.input_index"), {s.mlp_in}});
    if (s.mlp_out < h) out.push_back({L("mlp.output_index"), {s.mlp_out}});
    out.push_back({L("mlp.gate_proj.weight"), {f, s.mlp_in}});
    out.push_back({L("mlp.up_proj.weight"), {f, s.mlp_in}});
    out.push_back({L("mlp.down_proj.weight"), {s.mlp_out, f}});
    if (c.mlp_bias) {
      out.push_back({L("mlp.gate_proj.bias"), {f}});
      out.push_back({L("mlp.up_proj.bias"), {f}});
      out.push_back({L("mlp.down_proj.bias"), {s.mlp_out}});
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
    if (is_index_tensor(name)) {
      if (d != DType::I32 && d != DType::I64)
        fail_file(it->second.file.empty() ? src.description() : it->second.file,
                  "index list '{}' has dtype {}, expected I32 or I64", name, dtype_name(d));
      continue;
    }
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
