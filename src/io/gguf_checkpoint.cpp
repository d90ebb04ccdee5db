// A GGUF file as a Checkpoint: llama.cpp's metadata mapped to an HF config, its tensor names mapped to
// HF names, ggml shapes reversed to HF shapes, and llama.cpp's q/k row permutation undone on read.
#include <algorithm>
#include <climits>
#include <cmath>
#include <unordered_map>

#include "io/checkpoint.h"
#include "io/gguf.h"
#include "util/error.h"

namespace toga {

namespace {

struct ArchInfo {
  const char* gguf_name;
  const char* hf_architecture;
  Family family;
  // llama.cpp's converter reorders q/k rows for RoPE on adjacent pairs only for the Llama family;
  // Qwen2/Qwen3 use NeoX-style RoPE (rotate halves) in llama.cpp, so their rows are stored as in HF.
  bool permuted_qk;
};

constexpr ArchInfo kArchs[] = {
    {"llama", "LlamaForCausalLM", Family::Llama, true},
    {"qwen2", "Qwen2ForCausalLM", Family::Qwen2, false},
    {"qwen3", "Qwen3ForCausalLM", Family::Qwen3, false},
};

const ArchInfo& arch_of(const GGUFFile& f) {
  const std::string arch = f.get_string("general.architecture");
  for (const auto& a : kArchs)
    if (arch == a.gguf_name) return a;
  fail_file(f.path(), "unsupported architecture '{}' in general.architecture (supported: llama, qwen2, qwen3)", arch);
}

int get_positive_int(const GGUFFile& f, const std::string& key) {
  const int64_t v = f.get_int(key);
  if (v <= 0 || v > INT_MAX) fail_file(f.path(), "metadata key '{}' has value {}, expected a positive int", key, v);
  return static_cast<int>(v);
}

// float32 metadata widened exactly reads 1e-5 as 9.99999974738e-06; configs should carry the value
// the converter was given, which is the shortest decimal that round-trips through float32.
double get_float_clean(const GGUFFile& f, const std::string& key) {
  const double d = f.get_float(key);
  if (f.get(key).type != GGUFType::FLOAT32 || !std::isfinite(d)) return d;
  return std::stod(fmt::format("{}", static_cast<float>(d)));
}

// Llama 3.1-style GGUFs carry llama3 rope scaling as a tensor of per-frequency divisors rather than
// as metadata. Recover the HF parameters (factor, low/high frequency factors) from it and check that
// they regenerate the stored factors, so a tensor of any other shape of scaling is an error, not a
// silently different model.
void rope_scaling_from_factors(const GGUFFile& f, const GGUFTensorInfo& t, const std::string& arch, ModelConfig& c) {
  const int64_t n = t.numel();
  if (t.ne.size() != 1 || n != c.head_dim / 2)
    fail_file(f.path(), "tensor 'rope_freqs.weight' has {} elements, expected head_dim/2 = {}", n, c.head_dim / 2);
  std::vector<float> r(static_cast<size_t>(n));
  f.read_f32(t, r.data());
  for (float x : r)
    if (!(x >= 1.0f - 1e-6f) || !std::isfinite(x))
      fail_file(f.path(), "rope_freqs.weight holds {}, but llama3 rope factors are >= 1", x);
  const double factor = r.back();
  if (factor <= 1.0 + 1e-6) return;  // all ones: no scaling

  const std::string ctx_key = arch + ".rope.scaling.original_context_length";
  const double old_ctx = f.has(ctx_key) ? static_cast<double>(get_positive_int(f, ctx_key)) : 8192.0;
  auto x_of = [&](int64_t i) {  // old_ctx / wavelength of frequency i
    const double freq = std::pow(c.rope_theta, -2.0 * static_cast<double>(i) / c.head_dim);
    return old_ctx * freq / (2.0 * M_PI);
  };
  // In the transition band 1/r = (1-s)/factor + s with s linear in x: fit s = (x - low)/(high - low).
  double sx = 0, ss = 0, sxx = 0, sxs = 0;
  int m = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double ri = r[static_cast<size_t>(i)];
    if (ri > 1.0 + 1e-5 && ri < factor * (1.0 - 1e-5)) {
      const double s = (1.0 / ri - 1.0 / factor) / (1.0 - 1.0 / factor);
      const double x = x_of(i);
      sx += x, ss += s, sxx += x * x, sxs += x * s;
      ++m;
    }
  }
  double low = 1.0, high = 4.0;  // HF's defaults, used when the band holds fewer than two frequencies
  if (m >= 2) {
    const double k = (m * sxs - sx * ss) / (m * sxx - sx * sx);
    const double b = (ss - k * sx) / m;
    if (k > 0) {
      low = -b / k;
      high = low + 1.0 / k;
    }
    auto snap = [](double v) {
      const double q = std::round(v * 1000.0) / 1000.0;
      return std::fabs(q - v) < 1e-3 ? q : v;
    };
    low = snap(low);
    high = snap(high);
  }
  for (int64_t i = 0; i < n; ++i) {
    const double x = x_of(i);
    double want;
    if (x > high) want = 1.0;        // wavelength < old_ctx / high
    else if (x < low) want = factor;  // wavelength > old_ctx / low
    else {
      const double s = (x - low) / (high - low);
      want = 1.0 / ((1.0 - s) / factor + s);
    }
    if (std::fabs(want - r[static_cast<size_t>(i)]) > 1e-3 * want)
      fail_file(f.path(),
                "rope_freqs.weight[{}] = {} does not follow llama3 rope scaling (factor {}, low {}, high {}, "
                "original context {} give {})",
                i, r[static_cast<size_t>(i)], factor, low, high, old_ctx, want);
  }
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = factor;
  c.rope_scaling.low_freq_factor = low;
  c.rope_scaling.high_freq_factor = high;
  c.rope_scaling.original_max_position_embeddings = static_cast<int>(old_ctx);
}

DType dtype_of(GGMLType t) {
  switch (t) {
    case GGMLType::F32: return DType::F32;
    case GGMLType::F16: return DType::F16;
    case GGMLType::BF16: return DType::BF16;
    case GGMLType::Q4_0: return DType::Q4_0;
    case GGMLType::Q4_1: return DType::Q4_1;
    case GGMLType::Q5_0: return DType::Q5_0;
    case GGMLType::Q5_1: return DType::Q5_1;
    case GGMLType::Q8_0: return DType::Q8_0;
    case GGMLType::Q4_K: return DType::Q4_K;
    case GGMLType::Q5_K: return DType::Q5_K;
    case GGMLType::Q6_K: return DType::Q6_K;
    case GGMLType::Q2_K: return DType::Q2_K;
    case GGMLType::Q3_K: return DType::Q3_K;
    case GGMLType::Q8_K: return DType::Q8_K;
    default: return DType::U8;  // never decoded: open_gguf_checkpoint rejects such tensors first
  }
}

class GGUFTensorSource : public TensorSource {
 public:
  struct Entry {
    const GGUFTensorInfo* t;
    int64_t permute_heads;  // 0: stored as in HF
    int64_t head_dim;
  };

  GGUFTensorSource(std::unique_ptr<GGUFFile> file, std::vector<TensorInfo> infos,
                   std::unordered_map<std::string, Entry> entries)
      : file_(std::move(file)), infos_(std::move(infos)), entries_(std::move(entries)) {}

  std::vector<TensorInfo> tensors() const override { return infos_; }

  void read_f32(const std::string& name, float* dst) const override {
    const Entry& e = entry(name);
    file_->read_f32(*e.t, dst);
    if (e.permute_heads > 0) {
      // ggml rows are HF rows (ne[0] is the input dim), so a weight is [heads*head_dim, ne0] and a
      // bias is a column.
      const int64_t cols = e.t->ne.size() >= 2 ? static_cast<int64_t>(e.t->ne[0]) : 1;
      permute_rows_adjacent_to_halves(dst, e.permute_heads, e.head_dim, cols);
    }
  }

  // A row of a 2-D or larger tensor is a whole number of blocks (the parser checks ne[0]), so rows
  // decode on their own; 1-D tensors are small and use the whole-tensor default.
  bool row_reads(const std::string& name) const override { return entry(name).t->ne.size() >= 2; }

  void read_f32_rows(const std::string& name, int64_t row_begin, int64_t n_rows, float* dst) const override {
    const Entry& e = entry(name);
    const GGUFTensorInfo& t = *e.t;
    if (t.ne.size() < 2) return TensorSource::read_f32_rows(name, row_begin, n_rows, dst);
    check_row_range(file_->path(), info_of(name, t), row_begin, n_rows);
    if (n_rows == 0) return;
    if (!ggml_type_supported(static_cast<uint32_t>(t.type)))
      fail_file(file_->path(), "tensor '{}' has type {}, which toga cannot decode", t.name,
                ggml_type_name(static_cast<uint32_t>(t.type)));
    const int64_t rows = static_cast<int64_t>(t.ne.back()), cols = t.numel() / rows;
    const uint64_t row_bytes = t.nbytes / static_cast<uint64_t>(rows);
    const uint8_t* base = file_->tensor_data(t);
    if (e.permute_heads == 0) {
      dequantize(t.type, base + static_cast<uint64_t>(row_begin) * row_bytes, dst, n_rows * cols);
      return;
    }
    // HF row j*d/2 + i of a head is the file's row 2i + j of that head (see read_f32), so each row
    // is fetched from where llama.cpp stored it.
    const int64_t d = e.head_dim, half = d / 2;
#pragma omp parallel for schedule(static) if (n_rows * cols >= (int64_t(1) << 18))
    for (int64_t k = 0; k < n_rows; ++k) {
      const int64_t r = row_begin + k, p = r % d;
      const int64_t stored = r - p + 2 * (p % half) + p / half;
      dequantize(t.type, base + static_cast<uint64_t>(stored) * row_bytes, dst + k * cols, cols);
    }
  }

  void release(const std::string& name) const override { file_->release(*entry(name).t); }

  // Permuted rows are scattered within their heads: those are dropped with the whole tensor.
  void release_rows(const std::string& name, int64_t row_begin, int64_t n_rows) const override {
    const Entry& e = entry(name);
    if (e.t->ne.size() < 2 || e.permute_heads > 0) return;
    const uint64_t row_bytes = e.t->nbytes / e.t->ne.back();
    release_mapped_pages(file_->tensor_data(*e.t) + static_cast<uint64_t>(row_begin) * row_bytes,
                         static_cast<uint64_t>(n_rows) * row_bytes);
  }

  std::string description() const override { return file_->path(); }

 private:
  TensorInfo info_of(const std::string& name, const GGUFTensorInfo& t) const {
    TensorInfo info{name, dtype_of(t.type), {}, file_->path()};
    for (auto it = t.ne.rbegin(); it != t.ne.rend(); ++it) info.shape.push_back(static_cast<int64_t>(*it));
    return info;
  }

  const Entry& entry(const std::string& name) const {
    auto it = entries_.find(name);
    if (it == entries_.end()) fail_file(file_->path(), "missing tensor '{}'", name);
    return it->second;
  }

  std::unique_ptr<GGUFFile> file_;
  std::vector<TensorInfo> infos_;
  std::unordered_map<std::string, Entry> entries_;
};

}  // namespace

std::string gguf_to_hf_name(const std::string& g) {
  if (g == "token_embd.weight") return names::embed();
  if (g == "output_norm.weight") return names::final_norm();
  if (g == "output.weight") return names::lm_head();
  if (g.rfind("blk.", 0) != 0) return "";
  size_t i = 4, start = 4;
  while (i < g.size() && g[i] >= '0' && g[i] <= '9') ++i;
  if (i == start || i - start > 6 || i >= g.size() || g[i] != '.') return "";
  const int layer = std::stoi(g.substr(start, i - start));
  const std::string rest = g.substr(i + 1);
  const size_t dot = rest.rfind('.');
  if (dot == std::string::npos) return "";
  const std::string base = rest.substr(0, dot), kind = rest.substr(dot + 1);
  if (kind != "weight" && kind != "bias") return "";
  static const std::unordered_map<std::string, std::string> kBlock = {
      {"attn_norm", "input_layernorm"},
      {"attn_q", "self_attn.q_proj"},
      {"attn_k", "self_attn.k_proj"},
      {"attn_v", "self_attn.v_proj"},
      {"attn_output", "self_attn.o_proj"},
      {"attn_q_norm", "self_attn.q_norm"},
      {"attn_k_norm", "self_attn.k_norm"},
      {"ffn_norm", "post_attention_layernorm"},
      {"ffn_gate", "mlp.gate_proj"},
      {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"},
  };
  auto it = kBlock.find(base);
  if (it == kBlock.end()) return "";
  return names::layer(layer, it->second + "." + kind);
}

ModelConfig gguf_model_config(const GGUFFile& f) {
  const ArchInfo& a = arch_of(f);
  const std::string A = a.gguf_name;
  ModelConfig c;
  c.architecture = a.hf_architecture;
  c.family = a.family;
  c.hidden_size = get_positive_int(f, A + ".embedding_length");
  c.num_hidden_layers = get_positive_int(f, A + ".block_count");
  c.intermediate_size = get_positive_int(f, A + ".feed_forward_length");
  c.num_attention_heads = get_positive_int(f, A + ".attention.head_count");
  c.num_key_value_heads = f.has(A + ".attention.head_count_kv") ? get_positive_int(f, A + ".attention.head_count_kv")
                                                                 : c.num_attention_heads;
  c.rms_norm_eps = get_float_clean(f, A + ".attention.layer_norm_rms_epsilon");
  if (f.has(A + ".rope.freq_base")) c.rope_theta = get_float_clean(f, A + ".rope.freq_base");
  if (f.has(A + ".context_length")) c.max_position_embeddings = get_positive_int(f, A + ".context_length");

  c.head_dim = f.has(A + ".attention.key_length") ? get_positive_int(f, A + ".attention.key_length")
                                                  : c.hidden_size / c.num_attention_heads;
  if (f.has(A + ".attention.value_length") && get_positive_int(f, A + ".attention.value_length") != c.head_dim)
    fail_file(f.path(), "{}.attention.value_length {} differs from the key length {} (not supported)", A,
              f.get_int(A + ".attention.value_length"), c.head_dim);
  if (f.has(A + ".rope.dimension_count") && get_positive_int(f, A + ".rope.dimension_count") != c.head_dim)
    fail_file(f.path(), "{}.rope.dimension_count {} differs from the head size {} (partial RoPE is not supported)",
              A, f.get_int(A + ".rope.dimension_count"), c.head_dim);

  // Vocabulary: the token list is what llama.cpp itself trusts; the explicit key and the embedding
  // table are fallbacks for files without a tokenizer.
  if (f.has("tokenizer.ggml.tokens")) {
    const GGUFValue& v = f.get("tokenizer.ggml.tokens");
    if (!v.is_array())
      fail_file(f.path(), "metadata key 'tokenizer.ggml.tokens' has type {}, expected array[string]",
                gguf_value_type_name(v));
    const size_t n = std::get<std::vector<GGUFValue>>(v.value).size();
    if (n == 0 || n > INT_MAX) fail_file(f.path(), "tokenizer.ggml.tokens has {} entries", n);
    c.vocab_size = static_cast<int>(n);
  } else if (f.has(A + ".vocab_size")) {
    c.vocab_size = get_positive_int(f, A + ".vocab_size");
  } else if (const auto* e = f.find_tensor("token_embd.weight"); e && e->ne.size() == 2 && e->ne[1] <= INT_MAX) {
    c.vocab_size = static_cast<int>(e->ne[1]);
  } else {
    fail_file(f.path(), "cannot tell the vocabulary size: no tokenizer.ggml.tokens, {}.vocab_size or token_embd.weight", A);
  }

  c.tie_word_embeddings = f.find_tensor("output.weight") == nullptr;
  const bool q_bias = f.find_tensor("blk.0.attn_q.bias") != nullptr;
  const bool o_bias = f.find_tensor("blk.0.attn_output.bias") != nullptr;
  switch (c.family) {
    case Family::Qwen2:
      c.attention_bias = true;
      c.o_proj_bias = false;
      break;
    case Family::Qwen3:
      c.qk_norm = true;
      c.attention_bias = q_bias;
      c.o_proj_bias = o_bias;
      break;
    default:
      c.attention_bias = q_bias;
      c.o_proj_bias = o_bias;
      c.mlp_bias = f.find_tensor("blk.0.ffn_gate.bias") != nullptr;
      break;
  }

  const std::string scaling_key = A + ".rope.scaling.type";
  const std::string type = f.has(scaling_key) ? f.get_string(scaling_key) : "";
  if (type == "linear") {
    c.rope_scaling.type = "linear";
    c.rope_scaling.factor = get_float_clean(f, A + ".rope.scaling.factor");
  } else if (type.empty() && f.has(A + ".rope.scale_linear")) {  // the older spelling
    c.rope_scaling.type = "linear";
    c.rope_scaling.factor = get_float_clean(f, A + ".rope.scale_linear");
  } else if (!type.empty() && type != "none") {
    fail_file(f.path(), "unsupported {} '{}' (supported: none, linear, and llama3 via rope_freqs.weight)",
              scaling_key, type);
  }
  if (c.rope_scaling.type == "linear" && !(c.rope_scaling.factor > 0))
    fail_file(f.path(), "{}.rope.scaling.factor must be positive", A);
  if (c.rope_scaling.type == "linear" && c.rope_scaling.factor == 1.0) c.rope_scaling.type = "none";

  auto token_id = [&](const std::string& key) {
    const int64_t id = f.get_int(key);
    if (id < 0 || id >= c.vocab_size)
      fail_file(f.path(), "metadata key '{}' is {}, outside the vocabulary of {} tokens", key, id, c.vocab_size);
    return static_cast<int>(id);
  };
  if (f.has("tokenizer.ggml.bos_token_id")) c.bos_token_id = token_id("tokenizer.ggml.bos_token_id");
  // Chat models stop at end-of-turn as well as end-of-text; HF lists both as eos_token_id.
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"}) {
    if (!f.has(key)) continue;
    const int id = token_id(key);
    if (std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), id) == c.eos_token_ids.end())
      c.eos_token_ids.push_back(id);
  }

  c.validate(f.path());
  if (const auto* rf = f.find_tensor("rope_freqs.weight")) {
    if (c.rope_scaling.type != "none")
      fail_file(f.path(), "both {} and rope_freqs.weight are present", scaling_key);
    rope_scaling_from_factors(f, *rf, A, c);
  }
  return c;
}

Checkpoint open_gguf_checkpoint(const std::string& path) {
  auto file = std::make_unique<GGUFFile>(path);
  ModelConfig config = gguf_model_config(*file);
  const ArchInfo& arch = arch_of(*file);

  std::vector<TensorInfo> infos;
  std::unordered_map<std::string, GGUFTensorSource::Entry> entries;
  for (const auto& t : file->tensors()) {
    if (t.name == "rope_freqs.weight") continue;  // folded into config.rope_scaling
    std::string hf = gguf_to_hf_name(t.name);
    if (hf.empty()) hf = t.name;  // unknown: check_tensors_match_config reports it under its own name
    if (!ggml_type_supported(static_cast<uint32_t>(t.type)))
      fail_file(path, "tensor '{}' has type {}, which toga cannot decode", t.name,
                ggml_type_name(static_cast<uint32_t>(t.type)));
    TensorInfo info;
    info.name = hf;
    info.dtype = dtype_of(t.type);
    for (auto it = t.ne.rbegin(); it != t.ne.rend(); ++it) info.shape.push_back(static_cast<int64_t>(*it));
    info.file = path;

    GGUFTensorSource::Entry e{&t, 0, config.head_dim};
    if (arch.permuted_qk) {
      if (hf.find(".self_attn.q_proj.") != std::string::npos) e.permute_heads = config.num_attention_heads;
      if (hf.find(".self_attn.k_proj.") != std::string::npos) e.permute_heads = config.num_key_value_heads;
    }
    if (!entries.emplace(hf, e).second) fail_file(path, "two tensors map to '{}'", hf);
    infos.push_back(std::move(info));
  }
  auto src = std::make_unique<GGUFTensorSource>(std::move(file), std::move(infos), std::move(entries));
  // Shapes are checked before any permutation can index rows by the config's head layout.
  check_tensors_match_config(*src, config);

  Checkpoint ck;
  ck.path = path;
  ck.format = "gguf";
  ck.config = std::move(config);
  ck.tensors = std::move(src);
  return ck;
}

}  // namespace toga
