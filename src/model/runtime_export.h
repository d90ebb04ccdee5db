// Builds the libtorch-free runtime forward (runtime/transformer.h) from a loaded Model: packed
// linears taken from their kernels, unquantized ones packed as float32 panels, index lists, norms,
// RoPE frequencies and the KV-cache quantizer. What the runtime cannot run (fake-quantized
// activations on a dense kernel, online transforms, masks, search closures) is an error naming the
// site, so a caller can fall back to the libtorch forward.
#pragma once

#include <memory>

#include "model/model.h"
#include "runtime/transformer.h"

namespace toga {

struct RuntimeOptions {
  // "as-stored": lm_head as the checkpoint has it (an FP lm_head in float32 panels); "int8":
  // quantized at export, per output row, symmetric round-to-nearest — a quarter of the bytes a
  // decode step streams for a large vocabulary (llama.cpp's Q4_0 files keep it at 6.6 bits, Q6_K).
  std::string lm_head = "as-stored";
};

std::shared_ptr<const rt::Transformer> export_runtime(const Model& model, const RuntimeOptions& options = {});

// lm_head's INT8 form (per output row, symmetric RTN): codes int8 [out, in] and scales float [out, 1].
void int8_rows(const torch::Tensor& weight, torch::Tensor& codes, torch::Tensor& scales);
// Replaces an FP lm_head by its INT8 form, dequantized (untied from the embedding): what the libtorch
// forward evaluates for `--lm-head int8`, so quality is measured on the weights the runtime streams.
void use_int8_lm_head(Model& model);

}  // namespace toga
