#include "model/model.h"

#include <cmath>

#include "model/linear_kernel.h"
#include "util/error.h"

namespace toga {

using torch::indexing::Slice;

torch::Tensor LinearSite::forward(const torch::Tensor& x) const {
  for (const auto& [id, observe] : observers_) observe(*this, x);
  torch::Tensor in = in_index.defined() ? x.index_select(-1, in_index) : x;
  if (in_mask.defined()) in = in * in_mask;
  if (in_transform.defined()) in = torch::matmul(in, in_transform);
  if (act.active() && !(kernel && kernel->quantizes_input())) in = fake_quantize_activation(in, act.low, act.high, act.salient);
  if (custom_input) in = custom_input(in);
  static const DenseLinearKernel dense;
  torch::Tensor y = kernel ? kernel->apply(*this, in) : dense.apply(*this, in);
  if (out_mask.defined()) y = y * out_mask;
  if (custom_output) y = custom_output(y);
  if (out_index.defined()) {
    auto shape = y.sizes().vec();
    shape.back() = out_width;
    y = torch::zeros(shape, y.options()).index_copy(-1, out_index, y);
  }
  return y;
}

ObserverHandle LinearSite::add_observer(SiteObserver fn) {
  const uint64_t id = next_observer_id_++;
  observers_.emplace_back(id, std::move(fn));
  return ObserverHandle(this, id);
}

void ObserverHandle::reset() {
  if (!site_) return;
  auto& obs = site_->observers_;
  for (auto it = obs.begin(); it != obs.end(); ++it)
    if (it->first == id_) {
      obs.erase(it);
      break;
    }
  site_ = nullptr;
}

ObserverHandle& ObserverHandle::operator=(ObserverHandle&& o) noexcept {
  if (this != &o) {
    reset();
    site_ = o.site_;
    id_ = o.id_;
    o.site_ = nullptr;
  }
  return *this;
}

void LinearSite::clear_attachments() {
  observers_.clear();
  act = {};
  in_mask = torch::Tensor();
  in_transform = torch::Tensor();
  out_mask = torch::Tensor();
  custom_input = nullptr;
  custom_weight = nullptr;
  custom_output = nullptr;
}

void KVCache::broadcast_batch(int64_t n) {
  for (auto* list : {&k, &v})
    for (auto& t : *list) t = t.narrow(0, 0, 1).expand({n, t.size(1), t.size(2), t.size(3)}).contiguous();
}

// Reduced-precision models take statistics, RoPE angles and softmax in float32, as Hugging Face
// does; a float64 model stays float64 throughout, so that gradient checks by finite differences
// are not swamped by float32 rounding. float32 and bf16 run exactly the ops they always did.
static torch::ScalarType stats_dtype(torch::ScalarType t) {
  return t == torch::kDouble ? torch::kDouble : torch::kFloat32;
}

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& gain, double eps) {
  const auto xf = x.to(stats_dtype(x.scalar_type()));
  const auto normed = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return gain * normed.to(x.scalar_type());
}

torch::Tensor rope_inverse_frequencies(const ModelConfig& c) {
  const int64_t half = c.head_dim / 2;
  std::vector<double> inv(half);
  for (int64_t i = 0; i < half; ++i) inv[i] = 1.0 / std::pow(c.rope_theta, double(2 * i) / double(c.head_dim));
  const auto& rs = c.rope_scaling;
  if (rs.type == "linear") {
    for (auto& f : inv) f /= rs.factor;
  } else if (rs.type == "llama3") {
    // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between blended.
    const double old_ctx = rs.original_max_position_embeddings;
    const double low_wavelen = old_ctx / rs.low_freq_factor;
    const double high_wavelen = old_ctx / rs.high_freq_factor;
    for (auto& f : inv) {
      const double wavelen = 2.0 * M_PI / f;
      if (wavelen > low_wavelen) {
        f = f / rs.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth = (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
        f = (1.0 - smooth) * f / rs.factor + smooth * f;
      }
    }
  }
  std::vector<float> inv32(inv.begin(), inv.end());
  return torch::tensor(inv32, torch::kFloat32);
}

static torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

torch::Tensor placeholder_tensor(at::IntArrayRef shape, torch::Dtype dtype, torch::Device device) {
  return torch::zeros({}, torch::TensorOptions().dtype(dtype).device(device)).expand(shape);
}

bool is_placeholder(const torch::Tensor& t) {
  if (!t.defined() || t.numel() <= 1) return false;
  for (const auto s : t.strides())
    if (s != 0) return false;
  return true;
}

torch::Tensor Model::embed_tokens(const torch::Tensor& ids) const {
  if (is_placeholder(embed)) fail("the embedding is held by another process of this layer-sharded run");
  return torch::embedding(embed, ids.to(embed.device()));
}

torch::Tensor Model::norm_final(const torch::Tensor& h) const {
  return rms_norm(h, final_norm, config.rms_norm_eps);
}

torch::Tensor Model::block_forward(int layer, const torch::Tensor& h, int64_t start_pos, KVCache* cache) const {
  const Block& b = blocks.at(layer);
  if (is_placeholder(b.q.weight)) fail("layer {} is held by another process of this layer-sharded run", layer);
  const auto& c = config;
  // Heads from the weights: pruned blocks keep fewer (whole KV groups), unpruned ones the config's.
  const int64_t B = h.size(0), T = h.size(1), d = c.head_dim, nh = b.q.out_features() / d,
                nkv = b.k.out_features() / d, groups = nh / nkv;

  // Attention.
  const auto x = rms_norm(h, b.attn_norm, c.rms_norm_eps);
  auto q = b.q.forward(x).view({B, T, nh, d});
  auto k = b.k.forward(x).view({B, T, nkv, d});
  auto v = b.v.forward(x).view({B, T, nkv, d});
  if (c.qk_norm) {
    q = rms_norm(q, b.q_norm, c.rms_norm_eps);
    k = rms_norm(k, b.k_norm, c.rms_norm_eps);
  }
  q = q.transpose(1, 2);  // [B, nh, T, d]
  k = k.transpose(1, 2);  // [B, nkv, T, d]
  v = v.transpose(1, 2);

  // RoPE (rotate halves, HF layout); angles in float32 then cast, as HF does (float64 for a float64
  // model; its inverse frequencies are still the float32 ones).
  const auto angle_dtype = stats_dtype(q.scalar_type());
  const auto pos = torch::arange(start_pos, start_pos + T, torch::TensorOptions().dtype(angle_dtype).device(h.device()));
  const auto freqs = torch::outer(pos, rope_inv_freq.to(h.device(), angle_dtype));
  const auto emb = torch::cat({freqs, freqs}, -1);
  const auto cos = emb.cos().to(q.scalar_type()), sin = emb.sin().to(q.scalar_type());
  q = q * cos + rotate_half(q) * sin;
  k = k * cos + rotate_half(k) * sin;

  if (kv_transform) {
    k = kv_transform(k);
    v = kv_transform(v);
  }
  int64_t S = T;
  if (cache) {
    if (cache->k.size() != blocks.size()) {
      cache->k.assign(blocks.size(), torch::Tensor());
      cache->v.assign(blocks.size(), torch::Tensor());
    }
    auto& ck = cache->k[layer];
    auto& cv = cache->v[layer];
    const int64_t need = start_pos + T;
    if (!ck.defined() || ck.size(2) < need || ck.size(0) != B) {
      const int64_t cap = std::max<int64_t>(need, ck.defined() ? 2 * ck.size(2) : need);
      auto nk = torch::zeros({B, nkv, cap, d}, k.options());
      auto nv = torch::zeros({B, nkv, cap, d}, v.options());
      if (ck.defined() && start_pos > 0) {
        nk.narrow(2, 0, start_pos).copy_(ck.narrow(2, 0, start_pos).expand({B, nkv, start_pos, d}));
        nv.narrow(2, 0, start_pos).copy_(cv.narrow(2, 0, start_pos).expand({B, nkv, start_pos, d}));
      }
      ck = nk;
      cv = nv;
    }
    ck.narrow(2, start_pos, T).copy_(k);
    cv.narrow(2, start_pos, T).copy_(v);
    S = start_pos + T;
    k = ck.narrow(2, 0, S);
    v = cv.narrow(2, 0, S);
  } else if (start_pos != 0) {
    fail("block_forward: start_pos {} without a cache", start_pos);
  }

  // Grouped-query attention: query head j reads kv head j / groups. Queries go in chunks so that
  // the score matrix stays small (a few MB) and is reused by the allocator instead of page-faulting
  // in a fresh [T, S] block per layer; each chunk reads only the keys it can see.
  const auto qg = q.reshape({B, nkv, groups, T, d});
  const auto kg = k.unsqueeze(2);  // [B, nkv, 1, S, d]
  const auto vg = v.unsqueeze(2);
  const double scale = 1.0 / std::sqrt(double(d));
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(T, (int64_t(2) << 20) / std::max<int64_t>(1, B * nh * S)));
  const auto long_opts = torch::TensorOptions().dtype(torch::kLong).device(h.device());
  std::vector<torch::Tensor> outs;
  for (int64_t t0 = 0; t0 < T; t0 += chunk) {
    const int64_t tn = std::min(chunk, T - t0);
    const int64_t visible = start_pos + t0 + tn;  // keys at positions < visible can be seen
    const int64_t first = c.sliding_window > 0 ? std::max<int64_t>(0, start_pos + t0 - c.sliding_window + 1) : 0;
    const auto kc = kg.narrow(3, first, visible - first), vc = vg.narrow(3, first, visible - first);
    auto scores = torch::matmul(qg.narrow(3, t0, tn), kc.transpose(-1, -2)) * scale;  // [B,nkv,g,tn,keys]
    // Query t sits at absolute position start_pos + t and sees keys at positions <= it.
    const auto qpos = torch::arange(start_pos + t0, start_pos + t0 + tn, long_opts).unsqueeze(1);
    const auto kpos = torch::arange(first, visible, long_opts).unsqueeze(0);
    auto masked = kpos > qpos;
    if (c.sliding_window > 0) masked = masked.logical_or(kpos <= qpos - c.sliding_window);
    scores.masked_fill_(masked, -std::numeric_limits<float>::infinity());
    const auto probs = torch::softmax(scores, -1, stats_dtype(q.scalar_type())).to(q.scalar_type());
    outs.push_back(torch::matmul(probs, vc));  // [B, nkv, g, tn, d]
  }
  auto attn = outs.size() == 1 ? outs[0] : torch::cat(outs, 3);
  attn = attn.reshape({B, nh, T, d}).transpose(1, 2).reshape({B, T, nh * d});
  auto out = h + b.o.forward(attn);

  // MLP (SwiGLU).
  const auto y = rms_norm(out, b.mlp_norm, c.rms_norm_eps);
  // Sites run in a fixed order (gate, then up): observers and early stops rely on it.
  const auto gate = b.gate.forward(y);
  const auto up = b.up.forward(y);
  return out + b.down.forward(torch::silu(gate) * up);
}

torch::Tensor Model::forward_hidden(const torch::Tensor& ids, KVCache* cache) const {
  if (ids.dim() != 2) fail("forward: token ids must be [batch, seq], got {} dims", ids.dim());
  const int64_t start = cache ? cache->length : 0;
  auto h = embed_tokens(ids);
  for (int i = 0; i < static_cast<int>(blocks.size()); ++i) h = block_forward(i, h, start, cache);
  if (cache) cache->length = start + ids.size(1);
  return norm_final(h);
}

torch::Tensor Model::forward(const torch::Tensor& ids, KVCache* cache) const {
  return lm_head.forward(forward_hidden(ids, cache));
}

std::vector<LinearSite*> Model::block_sites() {
  std::vector<LinearSite*> out;
  for (auto& b : blocks)
    for (auto* s : b.sites()) out.push_back(s);
  return out;
}

std::vector<const LinearSite*> Model::block_sites() const {
  std::vector<const LinearSite*> out;
  for (const auto& b : blocks)
    for (const auto* s : b.sites()) out.push_back(s);
  return out;
}

LinearSite& Model::site(const std::string& name) {
  return const_cast<LinearSite&>(static_cast<const Model&>(*this).site(name));
}

const LinearSite& Model::site(const std::string& name) const {
  if (name == lm_head.name) return lm_head;
  for (const auto* s : block_sites())
    if (s->name == name) return *s;
  fail("no linear site named '{}'", name);
}

void Model::clear_attachments() {
  for (auto* s : block_sites()) s->clear_attachments();
  lm_head.clear_attachments();
  kv_transform = nullptr;
  kv_spec = QuantSpec{16};
}

LayerShape layer_shape(const Block& b, const ModelConfig& c) {
  const int64_t d = c.head_dim;
  auto width = [&](const torch::Tensor& index) { return index.defined() ? int(index.numel()) : c.hidden_size; };
  return {int(b.q.out_features() / d), int(b.k.out_features() / d), int(b.gate.out_features()),
          width(b.attn_in),           width(b.attn_out),           width(b.mlp_in),
          width(b.mlp_out)};
}

ModelConfig Model::current_config() const {
  ModelConfig c = config;
  c.layer_shapes.clear();
  bool uniform = true;
  for (const auto& b : blocks) {
    c.layer_shapes.push_back(layer_shape(b, config));
    uniform = uniform && c.layer_shapes.back() == config.uniform_layer_shape();
  }
  if (uniform) c.layer_shapes.clear();
  return c;
}

namespace {

// The site's weight with its columns in the order of `canonical` (the block's index list, or all
// channels): undoes a reordering, leaves a pruning subset in place.
torch::Tensor canonical_weight(const LinearSite& s, const torch::Tensor& canonical) {
  if (!s.in_index.defined()) return s.weight;
  const auto want = canonical.defined() ? canonical.to(s.in_index.device())
                                        : torch::arange(s.in_index.numel(), s.in_index.options());
  if (torch::equal(s.in_index, want)) return s.weight;
  // Stored column j holds channel in_index[j]; find, for each wanted channel, its stored column.
  const int64_t width = std::max(want.max().item<int64_t>(), s.in_index.max().item<int64_t>()) + 1;
  auto column_of = torch::full({width}, -1, s.in_index.options());
  column_of.index_copy_(0, s.in_index, torch::arange(s.in_index.numel(), s.in_index.options()));
  const auto cols = column_of.index_select(0, want);
  if ((cols < 0).any().item<bool>()) fail("site '{}': its input index does not cover its block's channels", s.name);
  return s.weight.index_select(1, cols);
}

}  // namespace

std::vector<std::pair<std::string, torch::Tensor>> Model::named_tensors(const std::set<std::string>& replaced) const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  out.push_back({names::embed(), embed});
  for (int i = 0; i < int(blocks.size()); ++i) {
    const Block& b = blocks[i];
    auto L = [&](const std::string& n) { return names::layer(i, n); };
    auto add_site = [&](const LinearSite& s, const std::string& hf, const torch::Tensor& canonical_in) {
      const std::string name = L(hf + ".weight");
      out.push_back({name, replaced.count(name) ? torch::Tensor() : canonical_weight(s, canonical_in)});
      if (s.bias.defined()) out.push_back({L(hf + ".bias"), s.bias});
    };
    out.push_back({L("input_layernorm.weight"), b.attn_norm});
    if (b.attn_in.defined()) out.push_back({L("self_attn.input_index"), b.attn_in});
    if (b.attn_out.defined()) out.push_back({L("self_attn.output_index"), b.attn_out});
    add_site(b.q, "self_attn.q_proj", b.attn_in);
    add_site(b.k, "self_attn.k_proj", b.attn_in);
    add_site(b.v, "self_attn.v_proj", b.attn_in);
    add_site(b.o, "self_attn.o_proj", {});
    if (b.q_norm.defined()) {
      out.push_back({L("self_attn.q_norm.weight"), b.q_norm});
      out.push_back({L("self_attn.k_norm.weight"), b.k_norm});
    }
    out.push_back({L("post_attention_layernorm.weight"), b.mlp_norm});
    if (b.mlp_in.defined()) out.push_back({L("mlp.input_index"), b.mlp_in});
    if (b.mlp_out.defined()) out.push_back({L("mlp.output_index"), b.mlp_out});
    add_site(b.gate, "mlp.gate_proj", b.mlp_in);
    add_site(b.up, "mlp.up_proj", b.mlp_in);
    add_site(b.down, "mlp.down_proj", {});
  }
  out.push_back({names::final_norm(), final_norm});
  if (!config.tie_word_embeddings) out.push_back({names::lm_head(), lm_head.weight});
  return out;
}

torch::Dtype parse_dtype(const std::string& s) {
  if (s == "fp32" || s == "float32" || s == "f32") return torch::kFloat32;
  if (s == "bf16" || s == "bfloat16") return torch::kBFloat16;
  if (s == "fp16" || s == "float16" || s == "f16") return torch::kFloat16;
  fail("unknown dtype '{}' (use fp32, bf16 or fp16)", s);
}

std::string dtype_string(torch::Dtype d) {
  if (d == torch::kFloat32) return "float32";
  if (d == torch::kBFloat16) return "bfloat16";
  if (d == torch::kFloat16) return "float16";
  return "other";
}

}  // namespace toga
