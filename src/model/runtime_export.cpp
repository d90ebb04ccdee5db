#include "model/runtime_export.h"

#include <cstdlib>

#include "util/error.h"

namespace toga {

namespace {

std::vector<float> floats(const torch::Tensor& t) {
  if (!t.defined()) return {};
  const torch::Tensor c = t.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

std::vector<int32_t> indices(const torch::Tensor& t) {
  if (!t.defined()) return {};
  const torch::Tensor c = t.detach().to(torch::kCPU, torch::kInt32).contiguous();
  return std::vector<int32_t>(c.data_ptr<int32_t>(), c.data_ptr<int32_t>() + c.numel());
}

rt::Linear export_linear(const LinearSite& s) {
  auto refuse = [&](const char* what) { fail("site '{}': the runtime forward cannot run {}", s.name, what); };
  if (s.custom_input || s.custom_weight || s.custom_output) refuse("search closures");
  if (s.in_mask.defined() || s.out_mask.defined()) refuse("pruning masks (extract the pruned model first)");
  if (s.in_transform.defined()) refuse("online input transforms");
  rt::Linear l;
  if (auto packed = s.kernel ? s.kernel->runtime_linear() : nullptr) {
    l = *packed;
  } else {
    if (s.act.active()) refuse("fake-quantized activations on the dense kernel");
    const torch::Tensor w = s.weight.detach().to(torch::kCPU, torch::kFloat32).contiguous();
    l.kind = rt::LinearKind::kDense;
    l.rows = w.size(0);
    l.cols = w.size(1);
    l.dense = rt::pack_dense(w.data_ptr<float>(), l.rows, l.cols);
    l.isa = rt::selected_isa();
  }
  l.in_index = indices(s.in_index);
  l.bias = floats(s.bias);
  return l;
}

// A float linear as INT8 weight-only codes, one symmetric scale per row.
rt::Linear int8_linear(const rt::Linear& dense, const torch::Tensor& weight) {
  torch::Tensor codes, scales;
  int8_rows(weight, codes, scales);
  const torch::Tensor zeros = torch::zeros_like(scales);
  rt::Linear l = dense;
  l.kind = rt::LinearKind::kWeightOnly;
  l.dense = {};
  l.packed = rt::pack_weight(codes.data_ptr<int8_t>(), scales.data_ptr<float>(), zeros.data_ptr<float>(), codes.size(0),
                             codes.size(1), {{0, codes.size(1), 8}});
  return l;
}

// Fuses linears that read one input into `into` (rows stacked) when their storage allows; the
// parts then keep only their shapes.
void fuse(rt::Linear& into, std::initializer_list<rt::Linear*> parts) {
  if (const char* env = std::getenv("TOGA_RUNTIME_FUSE"); env && std::string(env) == "0") return;  // A/B benchmarks
  rt::Linear fused = **parts.begin();
  for (auto it = parts.begin() + 1; it != parts.end(); ++it)
    if (!rt::append_rows(fused, **it)) return;
  into = std::move(fused);
  for (rt::Linear* p : parts) {
    p->dense = {};
    p->packed = {};
  }
}

}  // namespace

void int8_rows(const torch::Tensor& weight, torch::Tensor& codes, torch::Tensor& scales) {
  const torch::Tensor w = weight.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  scales = w.abs().amax(1, true) / 127.0f;
  scales = torch::where(scales > 0, scales, torch::ones_like(scales)).contiguous();
  codes = torch::round(w / scales).clamp(-127, 127).to(torch::kInt8).contiguous();
}

void use_int8_lm_head(Model& model) {
  LinearSite& head = model.lm_head;
  if (head.kernel && head.kernel->runtime_linear()) fail("--lm-head int8: the checkpoint's lm_head is already quantized");
  torch::Tensor codes, scales;
  int8_rows(head.weight, codes, scales);
  head.weight = (codes.to(torch::kFloat32) * scales).to(head.weight.device(), head.weight.scalar_type());
}

std::shared_ptr<const rt::Transformer> export_runtime(const Model& m, const RuntimeOptions& options) {
  const ModelConfig& c = m.config;
  if (m.kv_transform && !m.kv_spec.quantized()) fail("the runtime forward cannot run a custom KV-cache transform");
  if (m.kv_spec.quantized() && (m.kv_spec.bits < 2 || m.kv_spec.mse_clip))
    fail("the runtime KV cache stores 2..8-bit codes without MSE clipping (got {} bits)", m.kv_spec.bits);
  auto rt_model = std::make_shared<rt::Transformer>();
  rt::Transformer& t = *rt_model;
  t.hidden = c.hidden_size;
  t.head_dim = c.head_dim;
  t.vocab = m.embed.size(0);
  t.rms_eps = c.rms_norm_eps;
  t.sliding_window = c.sliding_window;
  t.rope_inv_freq = floats(m.rope_inv_freq);
  t.embed = floats(m.embed);
  t.final_norm = floats(m.final_norm);
  t.lm_head = export_linear(m.lm_head);
  if (options.lm_head == "int8") {
    if (t.lm_head.kind != rt::LinearKind::kDense) fail("--lm-head int8: the checkpoint's lm_head is already quantized");
    t.lm_head = int8_linear(t.lm_head, m.lm_head.weight);
  } else if (options.lm_head != "as-stored") {
    fail("unknown lm_head setting '{}' (as-stored or int8)", options.lm_head);
  }
  if (m.kv_spec.quantized()) t.kv = {m.kv_spec.bits, m.kv_spec.symmetric, m.kv_spec.clip_ratio};
  for (const Block& b : m.blocks) {
    rt::TransformerBlock rb;
    rb.attn_norm = floats(b.attn_norm);
    rb.mlp_norm = floats(b.mlp_norm);
    rb.q_norm = floats(b.q_norm);
    rb.k_norm = floats(b.k_norm);
    rb.q = export_linear(b.q);
    rb.k = export_linear(b.k);
    rb.v = export_linear(b.v);
    rb.o = export_linear(b.o);
    rb.gate = export_linear(b.gate);
    rb.up = export_linear(b.up);
    rb.down = export_linear(b.down);
    fuse(rb.qkv, {&rb.q, &rb.k, &rb.v});
    fuse(rb.gate_up, {&rb.gate, &rb.up});
    rb.heads = b.q.out_features() / c.head_dim;
    rb.kv_heads = b.k.out_features() / c.head_dim;
    rb.attn_out = indices(b.o.out_index);
    rb.mlp_out = indices(b.down.out_index);
    t.blocks.push_back(std::move(rb));
  }
  return rt_model;
}

}  // namespace toga
