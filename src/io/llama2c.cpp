// The legacy llama2.c checkpoint (run.c's format): int32 header, then fp32 weights, presented
// under HF names with q/k rows reordered for HF's half-split RoPE.
#include <cstring>
#include <map>

#include "io/checkpoint.h"
#include "util/error.h"
#include "util/mapped_file.h"

namespace toga {

namespace {

constexpr uint64_t kHeaderBytes = 7 * sizeof(int32_t);
// llama2.c's later export formats begin with this magic ("ak42" little-endian) instead of dim.
constexpr uint32_t kExportMagic = 0x616b3432;

struct Llama2cHeader {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

enum class Permute { None, Q, K };

struct Llama2cTensor {
  TensorInfo info;
  uint64_t offset;  // absolute byte offset in the file
  Permute permute;
};

class Llama2cSource : public TensorSource {
 public:
  Llama2cSource(std::unique_ptr<MappedFile> map, std::vector<Llama2cTensor> tensors, int64_t n_heads,
                int64_t n_kv_heads, int64_t head_dim)
      : map_(std::move(map)), n_heads_(n_heads), n_kv_heads_(n_kv_heads), head_dim_(head_dim) {
    for (auto& t : tensors) {
      infos_.push_back(t.info);
      index_[t.info.name] = t;
    }
  }

  std::vector<TensorInfo> tensors() const override { return infos_; }

  void read_f32(const std::string& name, float* dst) const override {
    const Llama2cTensor& t = find(name);
    const int64_t n = t.info.numel();
    std::memcpy(dst, map_->data() + t.offset, static_cast<size_t>(n) * sizeof(float));
    const int64_t cols = t.info.shape.back();
    if (t.permute == Permute::Q) permute_rows_adjacent_to_halves(dst, n_heads_, head_dim_, cols);
    if (t.permute == Permute::K) permute_rows_adjacent_to_halves(dst, n_kv_heads_, head_dim_, cols);
  }

  bool row_reads(const std::string& /*name*/) const override { return true; }

  void read_f32_rows(const std::string& name, int64_t row_begin, int64_t n_rows, float* dst) const override {
    const Llama2cTensor& t = find(name);
    check_row_range(map_->path(), t.info, row_begin, n_rows);
    const int64_t cols = tensor_row_length(t.info.shape);
    const size_t row_bytes = static_cast<size_t>(cols) * sizeof(float);
    const uint8_t* base = map_->data() + t.offset;
    if (t.permute == Permute::None) {
      if (n_rows > 0) std::memcpy(dst, base + static_cast<size_t>(row_begin) * row_bytes, n_rows * row_bytes);
      return;
    }
    // HF row j*d/2 + i of a head is stored as row 2i + j of that head (see read_f32).
    const int64_t d = head_dim_, half = d / 2;
    for (int64_t k = 0; k < n_rows; ++k) {
      const int64_t r = row_begin + k, p = r % d;
      const int64_t stored = r - p + 2 * (p % half) + p / half;
      std::memcpy(dst + k * cols, base + static_cast<size_t>(stored) * row_bytes, row_bytes);
    }
  }

  void release(const std::string& name) const override {
    const Llama2cTensor& t = find(name);
    map_->release(t.offset, static_cast<size_t>(t.info.numel()) * sizeof(float));
  }

  // Permuted rows are scattered within their heads: those are dropped with the whole tensor.
  void release_rows(const std::string& name, int64_t row_begin, int64_t n_rows) const override {
    const Llama2cTensor& t = find(name);
    if (t.permute != Permute::None) return;
    const size_t row_bytes = static_cast<size_t>(tensor_row_length(t.info.shape)) * sizeof(float);
    map_->release(t.offset + static_cast<size_t>(row_begin) * row_bytes, static_cast<size_t>(n_rows) * row_bytes);
  }

  std::string description() const override { return map_->path(); }

 private:
  const Llama2cTensor& find(const std::string& name) const {
    auto it = index_.find(name);
    if (it == index_.end()) fail_file(map_->path(), "missing tensor '{}'", name);
    return it->second;
  }

  std::unique_ptr<MappedFile> map_;
  int64_t n_heads_, n_kv_heads_, head_dim_;
  std::vector<TensorInfo> infos_;
  std::map<std::string, Llama2cTensor> index_;
};

}  // namespace

Checkpoint open_llama2c_checkpoint(const std::string& path) {
  auto map = std::make_unique<MappedFile>(path);
  const uint64_t size = map->size();
  if (size < kHeaderBytes)
    fail_file(path, "truncated file: {} bytes, shorter than the {}-byte llama2.c header", size, kHeaderBytes);
  uint32_t magic;
  std::memcpy(&magic, map->data(), 4);
  if (magic == kExportMagic)
    fail_file(path, "llama2.c export format version 1/2 (magic 'ak42') is not supported; only the legacy format is");
  Llama2cHeader h;
  std::memcpy(&h, map->data(), kHeaderBytes);

  auto positive = [&](int32_t v, const char* what) {
    if (v <= 0) fail_file(path, "bad llama2.c header: {} is {} (must be positive; not a llama2.c checkpoint?)", what, v);
  };
  positive(h.dim, "dim");
  positive(h.hidden_dim, "hidden_dim");
  positive(h.n_layers, "n_layers");
  positive(h.n_heads, "n_heads");
  positive(h.n_kv_heads, "n_kv_heads");
  positive(h.seq_len, "seq_len");
  if (h.vocab_size == 0 || h.vocab_size == INT32_MIN)
    fail_file(path, "bad llama2.c header: vocab_size is {}", h.vocab_size);
  if (h.dim % h.n_heads != 0)
    fail_file(path, "bad llama2.c header: dim {} is not a multiple of n_heads {}", h.dim, h.n_heads);
  if (h.n_heads % h.n_kv_heads != 0)
    fail_file(path, "bad llama2.c header: n_heads {} is not a multiple of n_kv_heads {}", h.n_heads, h.n_kv_heads);
  const int64_t head_dim = h.dim / h.n_heads;
  if (head_dim % 2 != 0) fail_file(path, "bad llama2.c header: head size {} is odd (RoPE needs pairs)", head_dim);

  const bool tied = h.vocab_size > 0;
  const int64_t dim = h.dim, hidden = h.hidden_dim, vocab = tied ? h.vocab_size : -int64_t(h.vocab_size);
  const int64_t kv_dim = head_dim * h.n_kv_heads;

  // Header values are up to 2^31 each, so the implied size can overflow 64 bits: it is computed
  // with checked arithmetic and compared with the file size before any tensor is listed, so a
  // nonsense header can neither wrap offsets nor make us list billions of layers.
  bool overflow = false;
  auto mul = [&](std::initializer_list<uint64_t> xs) {
    uint64_t r = 1;
    for (auto x : xs) overflow |= __builtin_mul_overflow(r, x, &r);
    return r;
  };
  auto add = [&](std::initializer_list<uint64_t> xs) {
    uint64_t r = 0;
    for (auto x : xs) overflow |= __builtin_add_overflow(r, x, &r);
    return r;
  };
  const uint64_t D = static_cast<uint64_t>(dim), F = static_cast<uint64_t>(hidden), V = static_cast<uint64_t>(vocab),
                 KV = static_cast<uint64_t>(kv_dim), L = static_cast<uint64_t>(h.n_layers),
                 S = static_cast<uint64_t>(h.seq_len), HS = static_cast<uint64_t>(head_dim);
  const uint64_t per_layer = add({D, mul({D, D}), mul({2, KV, D}), mul({D, D}), D, mul({3, F, D})});
  const uint64_t floats = add({mul({V, D}), mul({L, per_layer}), D, mul({S, HS}), tied ? 0 : mul({V, D})});
  const uint64_t expected = add({kHeaderBytes, mul({floats, sizeof(float)})});
  if (overflow)
    fail_file(path, "bad llama2.c header: dim {} hidden_dim {} n_layers {} vocab_size {} imply an impossible size",
              h.dim, h.hidden_dim, h.n_layers, h.vocab_size);
  if (expected != size)
    fail_file(path,
              "file size {} does not match the {} bytes its llama2.c header implies (dim {}, hidden_dim {}, "
              "n_layers {}, n_heads {}, n_kv_heads {}, vocab_size {}, seq_len {}){}",
              size, expected, h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads, h.vocab_size, h.seq_len,
              size < expected ? ": truncated file" : ": trailing bytes");

  std::vector<Llama2cTensor> tensors;
  uint64_t offset = kHeaderBytes;
  auto tensor = [&](const std::string& name, std::vector<int64_t> shape, Permute p) {
    Llama2cTensor t;
    t.info.name = name;
    t.info.dtype = DType::F32;
    t.info.shape = std::move(shape);
    t.info.file = path;
    t.offset = offset;
    t.permute = p;
    offset += static_cast<uint64_t>(t.info.numel()) * sizeof(float);
    tensors.push_back(std::move(t));
  };
  // llama2.c stores each kind of weight for all layers contiguously ([L, ...]).
  auto layers = [&](const char* suffix, const std::vector<int64_t>& shape, Permute p) {
    for (int i = 0; i < h.n_layers; ++i) tensor(names::layer(i, suffix), shape, p);
  };
  tensor(names::embed(), {vocab, dim}, Permute::None);
  layers("input_layernorm.weight", {dim}, Permute::None);
  layers("self_attn.q_proj.weight", {dim, dim}, Permute::Q);
  layers("self_attn.k_proj.weight", {kv_dim, dim}, Permute::K);
  layers("self_attn.v_proj.weight", {kv_dim, dim}, Permute::None);
  layers("self_attn.o_proj.weight", {dim, dim}, Permute::None);
  layers("post_attention_layernorm.weight", {dim}, Permute::None);
  layers("mlp.gate_proj.weight", {hidden, dim}, Permute::None);
  layers("mlp.down_proj.weight", {dim, hidden}, Permute::None);
  layers("mlp.up_proj.weight", {hidden, dim}, Permute::None);
  tensor(names::final_norm(), {dim}, Permute::None);
  // The legacy RoPE tables (real and imaginary, [seq_len, head_size / 2] each) are derivable
  // from theta, so they are skipped.
  offset += S * HS * sizeof(float);
  if (!tied) tensor(names::lm_head(), {vocab, dim}, Permute::None);
  if (offset != size) fail_file(path, "internal error: llama2.c layout covers {} of {} bytes", offset, size);

  Checkpoint ck;
  ck.path = path;
  ck.format = "llama2c";
  ModelConfig& c = ck.config;
  c.architecture = "LlamaForCausalLM";
  c.family = Family::Llama;
  c.hidden_size = h.dim;
  c.intermediate_size = h.hidden_dim;
  c.num_hidden_layers = h.n_layers;
  c.num_attention_heads = h.n_heads;
  c.num_key_value_heads = h.n_kv_heads;
  c.head_dim = static_cast<int>(head_dim);
  c.vocab_size = static_cast<int>(vocab);
  c.max_position_embeddings = h.seq_len;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = tied;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  c.torch_dtype = "float32";
  c.validate(path);

  ck.tensors = std::make_unique<Llama2cSource>(std::move(map), std::move(tensors), h.n_heads, h.n_kv_heads, head_dim);
  check_tensors_match_config(*ck.tensors, c);
  return ck;
}

}  // namespace toga
