// PTQ1.61 (../shared/docs/BASELINES.md §6), without its LoRA preprocessing (it needs a corpus that is
// not here): per linear, the input channels of largest max |x| (20 %, shared by the sites that read
// one input) are kept at 4 bits, asymmetric per row with the range of the whole row; the rest are
// binarized, Ŵ = (r₁ r₂ᵀ) ⊙ (α·sign(W − μ) + μ), μ the row mean over them, α (init mean |w|) and r₁
// per row, r₂ per column; then, block by block, α, r₁ and r₂ are learned with AdamW so that the
// quantized block's output on its quantized input matches the full-precision block's outputs on the
// full-precision and on the quantized input (MSE − log cosine, each). Weights, μ and masks stay.
//
// Stored form: the binarized columns are a 1-bit group (scale 2αr₁, zero 0.5 − μ/(2α)) with r₂ as
// column scales (quant/quantizer.h), the salient columns a 4-bit group.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "model/model.h"
#include "quant/apply_plan.h"
#include "quant/quantizer.h"

namespace toga {

// W [out, in] with its columns in stored order, the last `k_salient` salient.
QuantizedWeight ptq161_initial(const torch::Tensor& w, int64_t k_salient, const QuantSpec& high);

struct Ptq161Training {
  int epochs = 20;
  double lr_alpha = 5e-4, lr_scale = 1e-3;
};

// Learns α, r₁, r₂ of every site in `sites` (all of block `layer`, each initialised by
// ptq161_initial and attached) on `inputs` (the quantized model's block inputs, batches [b, T, H],
// one window per step) against `targets` (each a list like `inputs`: the FP block's outputs on the
// FP and on the quantized inputs); writes them into the sites' stored weights (fp16-rounded, as a
// checkpoint stores them) and re-attaches them. Returns the mean loss of each epoch.
std::vector<double> ptq161_refine_block(Model& m, int layer, const std::vector<QuantizedLinear*>& sites,
                                        const std::vector<torch::Tensor>& inputs,
                                        const std::vector<std::vector<torch::Tensor>>& targets, const Ptq161Training& t);

// The loss of one output against one target: mean squared error − log(mean over tokens of the
// cosine similarity over the hidden dimension).
torch::Tensor ptq161_loss(const torch::Tensor& out, const torch::Tensor& target);

}  // namespace toga
