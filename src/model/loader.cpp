#include <cmath>
#include <cstring>

#include "model/model.h"
#include "model/structure.h"
#include "util/error.h"

namespace toga {

namespace {

// Rows are decoded and converted in chunks of at least this many elements (16 MB as fp32): large
// enough that each chunk is decoded by all threads, small enough that a 1 GB embedding never
// exists as fp32 beside its converted copy.
constexpr int64_t kChunkElements = int64_t(1) << 22;

int64_t count_non_finite(const float* p, int64_t n) {
  int64_t bad = 0;
#pragma omp parallel for schedule(static) reduction(+ : bad) if (n > (1 << 18))
  for (int64_t i = 0; i < n; ++i) bad += std::isfinite(p[i]) ? 0 : 1;
  return bad;
}

// Decodes tensors chunk by chunk straight into their destination: fp32 weights are decoded in
// place, other dtypes through one reused fp32 chunk buffer. Each chunk is checked finite and its
// source pages released before the next, so loading peaks near the loaded weights' size.
class TensorReader {
 public:
  TensorReader(const TensorSource& src, const LoadOptions& opts) : src_(src), opts_(opts) {}

  // A pruning index list: integers in [0, width), strictly increasing (a sorted channel subset).
  torch::Tensor read_index(const std::string& name, int64_t width) {
    const TensorInfo info = src_.info(name);
    const std::string where = info.file.empty() ? src_.description() : info.file;
    const auto bytes = src_.read_bytes(name);
    const size_t esize = info.dtype == DType::I64 ? 8 : 4;
    if (bytes.size() != size_t(info.numel()) * esize) fail_file(where, "index list '{}' has the wrong size", name);
    std::vector<int64_t> idx(static_cast<size_t>(info.numel()));
    for (size_t i = 0; i < idx.size(); ++i) {
      if (esize == 8) {
        std::memcpy(&idx[i], bytes.data() + 8 * i, 8);
      } else {
        int32_t v;
        std::memcpy(&v, bytes.data() + 4 * i, 4);
        idx[i] = v;
      }
      if (idx[i] < 0 || idx[i] >= width || (i > 0 && idx[i] <= idx[i - 1]))
        fail_file(where, "index list '{}' must hold increasing channel numbers in [0, {}), entry {} is {}", name, width,
                  i, idx[i]);
    }
    return torch::tensor(idx, torch::kLong).to(opts_.device);
  }

  torch::Tensor read(const std::string& name) {
    const TensorInfo info = src_.info(name);
    const int64_t rows = tensor_rows(info.shape), cols = tensor_row_length(info.shape);
    // Sources that can only decode whole tensors are read in one chunk.
    const int64_t chunk_rows =
        !src_.row_reads(name) || cols == 0
            ? rows
            : std::min<int64_t>(rows, std::max<int64_t>(1, (kChunkElements + cols - 1) / cols));
    auto out = torch::empty(info.shape, torch::TensorOptions().dtype(opts_.dtype));
    const bool in_place = opts_.dtype == torch::kFloat32;
    torch::Tensor whole;  // the buffer of a one-chunk read of a large tensor, freed with it
    int64_t bad = 0, first_bad = -1;
    for (int64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
      const int64_t n = std::min(chunk_rows, rows - r0), elems = n * cols;
      float* dst;
      if (in_place) {
        dst = out.data_ptr<float>() + r0 * cols;
      } else if (chunk_rows == rows && elems > kChunkElements) {
        whole = torch::empty({elems}, torch::kFloat32);
        dst = whole.data_ptr<float>();
      } else {
        if (!chunk_.defined() || chunk_.numel() < elems) chunk_ = torch::empty({elems}, torch::kFloat32);
        dst = chunk_.data_ptr<float>();
      }
      src_.read_f32_rows(name, r0, n, dst);
      src_.release_rows(name, r0, n);
      if (const int64_t b = count_non_finite(dst, elems); b > 0) {
        if (first_bad < 0)
          for (int64_t i = 0; i < elems; ++i)
            if (!std::isfinite(dst[i])) {
              first_bad = r0 * cols + i;
              break;
            }
        bad += b;
      }
      if (!in_place && elems > 0)
        out.view({rows, cols}).narrow(0, r0, n).copy_(torch::from_blob(dst, {n, cols}, torch::kFloat32));
    }
    src_.release(name);
    if (bad > 0)
      fail_file(info.file.empty() ? src_.description() : info.file,
                "tensor '{}' holds {} non-finite value(s) (NaN or Inf), the first at flat index {}", name, bad,
                first_bad);
    return opts_.device.is_cpu() ? out : out.to(opts_.device);
  }

  // The tensor, or only its shape when another process of a layer-sharded run holds it.
  torch::Tensor read_if(bool held, const std::string& name) {
    return held ? read(name) : placeholder_tensor(src_.info(name).shape, opts_.dtype, opts_.device);
  }

 private:
  const TensorSource& src_;
  const LoadOptions& opts_;
  torch::Tensor chunk_;  // reused by every chunked tensor of a non-fp32 load
};

LinearSite make_site(TensorReader& reader, const std::string& site_name, const std::string& hf_prefix, bool has_bias,
                     bool held) {
  LinearSite s;
  s.name = site_name;
  s.weight = reader.read_if(held, hf_prefix + ".weight");
  if (has_bias) s.bias = reader.read(hf_prefix + ".bias");
  return s;
}

}  // namespace

Model load_model(const Checkpoint& ckpt, const LoadOptions& opts) {
  const auto& c = ckpt.config;
  const TensorSource& src = *ckpt.tensors;
  check_tensors_match_config(src, c);
  Model m;
  m.config = c;
  torch::NoGradGuard no_grad;
  TensorReader reader(src, opts);
  const int layer_end = opts.layer_end < 0 ? c.num_hidden_layers : opts.layer_end;
  if (opts.layer_begin < 0 || opts.layer_begin > layer_end || layer_end > c.num_hidden_layers)
    fail("layers [{}, {}) are not a range of the model's {} layers", opts.layer_begin, layer_end, c.num_hidden_layers);
  m.embed = reader.read_if(opts.embeddings, names::embed());
  m.blocks.resize(c.num_hidden_layers);
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    Block& b = m.blocks[i];
    const bool held = i >= opts.layer_begin && i < layer_end;
    auto hf = [&](const char* s) { return names::layer(i, s); };
    auto site = [&](const char* s) { return fmt::format("layers.{}.{}", i, s); };
    b.attn_norm = reader.read(hf("input_layernorm.weight"));
    b.q = make_site(reader, site("self_attn.q_proj"), hf("self_attn.q_proj"), c.attention_bias, held);
    b.k = make_site(reader, site("self_attn.k_proj"), hf("self_attn.k_proj"), c.attention_bias, held);
    b.v = make_site(reader, site("self_attn.v_proj"), hf("self_attn.v_proj"), c.attention_bias, held);
    b.o = make_site(reader, site("self_attn.o_proj"), hf("self_attn.o_proj"), c.o_proj_bias, held);
    if (c.qk_norm) {
      b.q_norm = reader.read(hf("self_attn.q_norm.weight"));
      b.k_norm = reader.read(hf("self_attn.k_norm.weight"));
    }
    b.mlp_norm = reader.read(hf("post_attention_layernorm.weight"));
    b.gate = make_site(reader, site("mlp.gate_proj"), hf("mlp.gate_proj"), c.mlp_bias, held);
    b.up = make_site(reader, site("mlp.up_proj"), hf("mlp.up_proj"), c.mlp_bias, held);
    b.down = make_site(reader, site("mlp.down_proj"), hf("mlp.down_proj"), c.mlp_bias, held);
    // Pruned blocks read and write subsets of the residual stream.
    const LayerShape shape = c.layer(i);
    const int64_t hidden = c.hidden_size;
    if (shape.attn_in < hidden) b.attn_in = reader.read_index(hf("self_attn.input_index"), hidden);
    if (shape.attn_out < hidden) b.attn_out = reader.read_index(hf("self_attn.output_index"), hidden);
    if (shape.mlp_in < hidden) b.mlp_in = reader.read_index(hf("mlp.input_index"), hidden);
    if (shape.mlp_out < hidden) b.mlp_out = reader.read_index(hf("mlp.output_index"), hidden);
    apply_block_structure(b, hidden);
  }
  m.final_norm = reader.read(names::final_norm());
  m.lm_head.name = "lm_head";
  m.lm_head.weight = c.tie_word_embeddings ? m.embed : reader.read_if(opts.embeddings, names::lm_head());
  m.rope_inv_freq = rope_inverse_frequencies(c).to(opts.device);
  return m;
}

}  // namespace toga
