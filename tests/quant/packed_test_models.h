// What the packed-kernel and runtime-forward tests quantize: a small GQA Llama whose widths give
// ragged groups, the quantization formats they check, and the pruned block TOGA joint would write.
#pragma once

#include "model/tiny_model.h"
#include "quant/recipes.h"

namespace toga::test {

// 64 channels, 96 intermediate, 4 heads on 2 KV heads of 16.
inline ModelConfig packed_test_config() {
  ModelConfig c = tiny_config(Family::Llama);
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  return c;
}

// Atom's W4A4 + INT8 salient + KV4 with groups of 24: 56 low columns = 24 + 24 + 8 (ragged).
inline QuantizeOptions atom_ragged_options() {
  QuantizeOptions o = find_recipe("atom").defaults();
  o.weight_low.group_size = o.act_low.group_size = 24;
  return o;
}

// W(1.6)A16: binary (centered, groups of 24) + 20 % INT4 salient, weight-only, KV16.
inline QuantizeOptions binary_int4_options() {
  QuantizeOptions o = find_recipe("atom").defaults();
  o.weight_low = {1, true, 24};
  o.weight_low.binary_centered = true;
  o.weight_high = {4, true, 0};
  o.act_low = o.act_high = {16};
  o.salient_fraction = 0.2;
  o.kv = {16};
  return o;
}

// A pruned block (TOGA joint's output): smaller matrices with index lists.
inline BlockPruning pruned_block() {
  BlockPruning keep;
  keep.attn_in = torch::arange(0, 64, 2, torch::kLong);
  keep.mlp_inner = torch::arange(0, 96, 3, torch::kLong);
  keep.mlp_out = torch::arange(8, 64, torch::kLong);
  return keep;
}

}  // namespace toga::test
