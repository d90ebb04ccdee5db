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

}  // namespace toga
