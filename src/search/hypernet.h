// DISP-LLM's hypernetwork, emitting the search's masks (precision and pruning alike): per-layer input embeddings, a bidirectional GRU
// over the layer sequence (so each layer's choice sees the others'), LayerNorm + GELU, and one linear
// head per mask group giving one logit per channel. Masks are drawn from the logits with
// Gumbel-Sigmoid and binarized with a straight-through estimator; the final masks are the logits'
// signs (then adjusted to the budget).
#pragma once

#include <torch/torch.h>

#include <vector>

#include "search/supernet.h"

namespace toga {

class HypernetImpl : public torch::nn::Module {
 public:
  // `prior`: one {0, 1} mask per group (prior_masks in supernet.h); the heads' biases start at
  // +init_logit where it is 1 and −init_logit elsewhere, so the search starts from a known point at
  // the target budget (Atom's fixed fraction, a uniform keep ratio) and learns where to move.
  HypernetImpl(const std::vector<MaskGroup>& groups, const std::vector<torch::Tensor>& prior, double init_logit = 3.0,
               int64_t embedding = 64, int64_t hidden = 128, uint64_t seed = 0);
  // Logits, one [channels] tensor per mask group, float32.
  std::vector<torch::Tensor> forward();

 private:
  std::vector<int64_t> group_layer_;
  torch::Tensor layer_embeddings_;  // [layers, embedding]
  torch::nn::GRU gru_{nullptr};
  torch::nn::LayerNorm norm_{nullptr};
  std::vector<torch::nn::Linear> heads_;
};
TORCH_MODULE(Hypernet);

struct MaskSampling {
  double tau = 0.5;
  bool noise = true;  // Gumbel (logistic) noise, from a generator seeded by `seed`
  bool hard = true;   // forward values {0, 1}, gradient of the soft sigmoid (straight through)
  uint64_t seed = 0;
};

// 1[m > 0.5] in the forward, the gradient of m backward (straight through).
torch::Tensor straight_through_hard(const torch::Tensor& soft);

// m = sigmoid((logit + g) / tau), g = log u − log(1 − u); hard: straight_through_hard(m).
std::vector<torch::Tensor> sample_masks(const std::vector<torch::Tensor>& logits, const MaskSampling& s);

}  // namespace toga
