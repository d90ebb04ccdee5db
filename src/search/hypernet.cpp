#include "search/hypernet.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "util/error.h"

namespace toga {

using torch::Tensor;

HypernetImpl::HypernetImpl(const std::vector<MaskGroup>& groups, const std::vector<Tensor>& prior, double init_logit,
                           int64_t embedding, int64_t hidden, uint64_t seed) {
  if (groups.empty()) fail("the hypernetwork needs at least one mask group");
  if (prior.size() != groups.size()) fail("{} prior masks for {} mask groups", prior.size(), groups.size());
  int64_t layers = 0;
  for (const MaskGroup& g : groups) {
    group_layer_.push_back(g.layer);
    layers = std::max<int64_t>(layers, g.layer + 1);
  }
  torch::manual_seed(seed);  // parameter initialisation is part of the run's seed
  layer_embeddings_ = register_parameter("layer_embeddings", torch::randn({layers, embedding}));
  gru_ = register_module("gru", torch::nn::GRU(torch::nn::GRUOptions(embedding, hidden).bidirectional(true)));
  norm_ = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({2 * hidden})));
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < groups.size(); ++i) {
    auto head = register_module("head" + std::to_string(i), torch::nn::Linear(2 * hidden, groups[i].channels));
    // Small weights: the prior in the bias dominates at the start, the GRU's signal grows as it learns.
    head->weight.mul_(0.1);
    head->bias.copy_(init_logit * (2 * prior[i].to(torch::kFloat32) - 1));
    heads_.push_back(head);
  }
}

std::vector<Tensor> HypernetImpl::forward() {
  const auto out = std::get<0>(gru_->forward(layer_embeddings_.unsqueeze(1))).squeeze(1);  // [layers, 2H]
  const Tensor features = torch::gelu(norm_->forward(out));
  std::vector<Tensor> logits;
  for (size_t i = 0; i < heads_.size(); ++i) logits.push_back(heads_[i]->forward(features[group_layer_[i]]));
  return logits;
}

Tensor straight_through_hard(const Tensor& soft) {
  // hard + (soft − soft.detach()): the added term is exactly zero, so the values stay {0, 1}.
  return (soft > 0.5).to(soft.scalar_type()) + (soft - soft.detach());
}

std::vector<Tensor> sample_masks(const std::vector<Tensor>& logits, const MaskSampling& s) {
  if (!(s.tau > 0)) fail("Gumbel-Sigmoid temperature must be positive, got {}", s.tau);
  auto gen = at::detail::createCPUGenerator(s.seed);
  std::vector<Tensor> masks;
  for (const Tensor& l : logits) {
    Tensor z = l;
    if (s.noise) {
      const Tensor u = torch::rand(l.sizes(), gen, torch::TensorOptions().dtype(torch::kFloat64)).clamp(1e-10, 1 - 1e-10);
      z = l + (torch::log(u) - torch::log1p(-u)).to(l.scalar_type()).to(l.device());
    }
    const Tensor soft = torch::sigmoid(z / s.tau);
    masks.push_back(s.hard ? straight_through_hard(soft) : soft);
  }
  return masks;
}

}  // namespace toga
