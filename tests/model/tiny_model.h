// Random in-memory models for tests that need a Model but no checkpoint file.
#pragma once

#include <memory>
#include <vector>

#include "io/checkpoint.h"
#include "model/model.h"
#include "reference_llama.h"

namespace toga::test {

// Goes through load_model, so the model gets the same checks and dtype conversion as one read
// from disk, and the weights stay available for reference_forward().
inline Model build_model(const ModelConfig& c, const ReferenceWeights& w, LoadOptions opts = {}) {
  Checkpoint ck;
  ck.config = c;
  auto src = std::make_unique<MemoryTensorSource>("memory");
  fill_source(w, *src);
  ck.tensors = std::move(src);
  return load_model(ck, opts);
}

inline Model random_model(const ModelConfig& c, uint64_t seed, torch::Dtype dtype = torch::kFloat32) {
  LoadOptions opts;
  opts.dtype = dtype;
  return build_model(c, random_weights(c, seed), opts);
}

// n uniformly random token ids below `vocab`: training data for searches on random models.
// [batch, length] token ids from a seeded draw.
inline torch::Tensor random_ids(const ModelConfig& c, uint64_t seed, int64_t batch, int64_t length) {
  torch::manual_seed(seed);
  return torch::randint(c.vocab_size, {batch, length}, torch::kLong);
}

inline std::vector<int> random_token_stream(int vocab, int n, uint64_t seed) {
  torch::manual_seed(seed);
  const torch::Tensor t = torch::randint(vocab, {n}, torch::kLong);
  return std::vector<int>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + n);
}

// GQA (4 query heads on 2 KV heads), two layers, widths 16 / 24: small enough for a finite
// difference of every mask entry, large enough that masks of every kind exist.
inline ModelConfig gqa_gradient_config() {
  ModelConfig c = tiny_config(Family::Llama);
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 4;
  c.vocab_size = 32;
  return c;
}

}  // namespace toga::test
