// Per-block structure: which residual channels a block reads and writes, which heads and MLP
// channels it keeps (DISP-LLM's dimension-independent structured pruning, plus whole KV groups).
// A pruned block is physically smaller dense matrices plus index lists; the residual stream keeps
// its full width and each block gathers its input channels and scatters its output channels.
#pragma once

#include "model/model.h"

namespace toga {

// Kept channels, each int64, strictly increasing, in the unpruned model's numbering; undefined = all.
struct BlockPruning {
  torch::Tensor attn_in;    // residual channels q/k/v read (P1)
  torch::Tensor attn_out;   // residual channels o_proj writes (P2)
  torch::Tensor mlp_in;     // residual channels gate/up read (P3)
  torch::Tensor mlp_inner;  // intermediate channels kept (P4)
  torch::Tensor mlp_out;    // residual channels down_proj writes (P5)
  torch::Tensor kv_heads;   // KV heads kept, with all their query heads (GQA groups)
};

// Slices block `layer` to the kept channels (weights, biases, index lists). The block must not be
// reordered or quantized yet (prune first, then quantize what is left); an index out of range, not
// increasing or empty is an error naming the block.
void prune_block(Model& model, int layer, const BlockPruning& keep);

// Points the block's sites at its index lists: q/k/v and gate/up gather attn_in / mlp_in, o_proj
// and down_proj scatter into attn_out / mlp_out of the hidden width.
void apply_block_structure(Block& b, int64_t hidden);

}  // namespace toga
