#include "model/structure.h"

#include "util/error.h"

namespace toga {

namespace {

// Checks a kept-channel list against a width; returns it as int64 on `device`.
torch::Tensor checked_keep(const torch::Tensor& keep, int64_t width, const std::string& what, int layer,
                           torch::Device device) {
  const auto k = keep.to(torch::kCPU, torch::kLong).contiguous();
  if (k.dim() != 1 || k.numel() == 0) fail("layer {}: {} must be a non-empty list of channels", layer, what);
  const int64_t* p = k.data_ptr<int64_t>();
  for (int64_t i = 0; i < k.numel(); ++i)
    if (p[i] < 0 || p[i] >= width || (i > 0 && p[i] <= p[i - 1]))
      fail("layer {}: {} must be increasing channel numbers in [0, {}), entry {} is {}", layer, what, width, i, p[i]);
  return k.to(device);
}

// Positions of the channels `keep` (unpruned numbering) within the block's current index list.
torch::Tensor positions_in(const torch::Tensor& current, const torch::Tensor& keep, const std::string& what,
                           int layer) {
  if (!current.defined()) return keep;
  const auto pos = torch::searchsorted(current, keep);
  const auto clamped = pos.clamp_max(current.numel() - 1);
  if (!torch::equal(current.index_select(0, clamped), keep))
    fail("layer {}: {} keeps channels the block has already pruned", layer, what);
  return pos;
}

void slice_rows(LinearSite& s, const torch::Tensor& rows) {
  s.weight = s.weight.index_select(0, rows).contiguous();
  if (s.bias.defined()) s.bias = s.bias.index_select(0, rows).contiguous();
}

void slice_cols(LinearSite& s, const torch::Tensor& cols) { s.weight = s.weight.index_select(1, cols).contiguous(); }

}  // namespace

void prune_block(Model& m, int layer, const BlockPruning& keep) {
  Block& b = m.blocks.at(layer);
  const auto& c = m.config;
  const int64_t hidden = c.hidden_size, d = c.head_dim;
  const auto dev = b.q.weight.device();
  auto structural = [&](const LinearSite& s, const torch::Tensor& block_index) {
    return !s.in_index.defined() || (block_index.defined() && s.in_index.is_same(block_index));
  };
  for (const auto& [s, index] : std::vector<std::pair<const LinearSite*, torch::Tensor>>{
           {&b.q, b.attn_in}, {&b.k, b.attn_in}, {&b.v, b.attn_in}, {&b.o, {}},
           {&b.gate, b.mlp_in}, {&b.up, b.mlp_in}, {&b.down, {}}})
    if (s->act.active() || s->kernel || !structural(*s, index))
      fail("layer {}: site '{}' is reordered or quantized; prune before quantizing", layer, s->name);

  if (keep.kv_heads.defined()) {
    const int64_t nkv = b.k.out_features() / d, groups = (b.q.out_features() / d) / nkv;
    const auto heads = checked_keep(keep.kv_heads, nkv, "kv_heads", layer, dev);
    auto rows_of = [&](const torch::Tensor& head_ids, int64_t per_head) {
      const auto base = (head_ids * per_head).unsqueeze(1);
      return (base + torch::arange(per_head, head_ids.options()).unsqueeze(0)).reshape({-1});
    };
    const auto kv_rows = rows_of(heads, d);
    const auto q_rows = rows_of(heads, groups * d);  // query heads of a kept group are contiguous
    slice_rows(b.q, q_rows);
    slice_rows(b.k, kv_rows);
    slice_rows(b.v, kv_rows);
    slice_cols(b.o, q_rows);
  }
  if (keep.attn_in.defined()) {
    const auto k = checked_keep(keep.attn_in, hidden, "attn_in", layer, dev);
    const auto cols = positions_in(b.attn_in, k, "attn_in", layer);
    for (auto* s : {&b.q, &b.k, &b.v}) slice_cols(*s, cols);
    b.attn_in = k;
  }
  if (keep.attn_out.defined()) {
    const auto k = checked_keep(keep.attn_out, hidden, "attn_out", layer, dev);
    slice_rows(b.o, positions_in(b.attn_out, k, "attn_out", layer));
    b.attn_out = k;
  }
  if (keep.mlp_in.defined()) {
    const auto k = checked_keep(keep.mlp_in, hidden, "mlp_in", layer, dev);
    const auto cols = positions_in(b.mlp_in, k, "mlp_in", layer);
    for (auto* s : {&b.gate, &b.up}) slice_cols(*s, cols);
    b.mlp_in = k;
  }
  if (keep.mlp_inner.defined()) {
    const auto k = checked_keep(keep.mlp_inner, b.gate.out_features(), "mlp_inner", layer, dev);
    slice_rows(b.gate, k);
    slice_rows(b.up, k);
    slice_cols(b.down, k);
  }
  if (keep.mlp_out.defined()) {
    const auto k = checked_keep(keep.mlp_out, hidden, "mlp_out", layer, dev);
    slice_rows(b.down, positions_in(b.mlp_out, k, "mlp_out", layer));
    b.mlp_out = k;
  }
  // A list that keeps every channel is no pruning: store none.
  for (auto* index : {&b.attn_in, &b.attn_out, &b.mlp_in, &b.mlp_out})
    if (index->defined() && index->numel() == hidden) *index = torch::Tensor();
  apply_block_structure(b, hidden);
}

void apply_block_structure(Block& b, int64_t hidden) {
  for (auto* s : {&b.q, &b.k, &b.v}) s->in_index = b.attn_in;
  for (auto* s : {&b.gate, &b.up}) s->in_index = b.mlp_in;
  b.o.out_index = b.attn_out;
  b.o.out_width = b.attn_out.defined() ? hidden : 0;
  b.down.out_index = b.mlp_out;
  b.down.out_width = b.mlp_out.defined() ? hidden : 0;
}

}  // namespace toga
