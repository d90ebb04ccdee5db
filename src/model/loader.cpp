#include "model/model.h"
#include "util/error.h"

namespace toga {

namespace {

// Decodes one tensor to fp32, rejects non-finite values, converts to the model's dtype and device.
torch::Tensor read_tensor(const TensorSource& src, const std::string& name, const LoadOptions& opts) {
  const TensorInfo info = src.info(name);
  auto t = torch::empty(info.shape, torch::kFloat32);
  src.read_f32(name, t.data_ptr<float>());
  src.release(name);
  const auto finite = torch::isfinite(t);
  if (!finite.all().item<bool>()) {
    const int64_t first = (~finite).flatten().nonzero()[0].item<int64_t>();
    const int64_t bad = (~finite).sum().item<int64_t>();
    fail_file(info.file.empty() ? src.description() : info.file,
              "tensor '{}' holds {} non-finite value(s) (NaN or Inf), the first at flat index {}", name, bad, first);
  }
  if (opts.dtype == torch::kFloat32 && opts.device.is_cpu()) return t;
  return t.to(opts.device, opts.dtype);
}

LinearSite make_site(const TensorSource& src, const std::string& site_name, const std::string& hf_prefix,
                     bool has_bias, const LoadOptions& opts) {
  LinearSite s;
  s.name = site_name;
  s.weight = read_tensor(src, hf_prefix + ".weight", opts);
  if (has_bias) s.bias = read_tensor(src, hf_prefix + ".bias", opts);
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
  m.embed = read_tensor(src, names::embed(), opts);
  m.blocks.resize(c.num_hidden_layers);
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    Block& b = m.blocks[i];
    auto hf = [&](const char* s) { return names::layer(i, s); };
    auto site = [&](const char* s) { return fmt::format("layers.{}.{}", i, s); };
    b.attn_norm = read_tensor(src, hf("input_layernorm.weight"), opts);
    b.q = make_site(src, site("self_attn.q_proj"), hf("self_attn.q_proj"), c.attention_bias, opts);
    b.k = make_site(src, site("self_attn.k_proj"), hf("self_attn.k_proj"), c.attention_bias, opts);
    b.v = make_site(src, site("self_attn.v_proj"), hf("self_attn.v_proj"), c.attention_bias, opts);
    b.o = make_site(src, site("self_attn.o_proj"), hf("self_attn.o_proj"), c.o_proj_bias, opts);
    if (c.qk_norm) {
      b.q_norm = read_tensor(src, hf("self_attn.q_norm.weight"), opts);
      b.k_norm = read_tensor(src, hf("self_attn.k_norm.weight"), opts);
    }
    b.mlp_norm = read_tensor(src, hf("post_attention_layernorm.weight"), opts);
    b.gate = make_site(src, site("mlp.gate_proj"), hf("mlp.gate_proj"), c.mlp_bias, opts);
    b.up = make_site(src, site("mlp.up_proj"), hf("mlp.up_proj"), c.mlp_bias, opts);
    b.down = make_site(src, site("mlp.down_proj"), hf("mlp.down_proj"), c.mlp_bias, opts);
  }
  m.final_norm = read_tensor(src, names::final_norm(), opts);
  m.lm_head.name = "lm_head";
  m.lm_head.weight = c.tie_word_embeddings ? m.embed : read_tensor(src, names::lm_head(), opts);
  m.rope_inv_freq = rope_inverse_frequencies(c).to(opts.device);
  return m;
}

}  // namespace toga
