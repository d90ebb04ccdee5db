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

std::shared_ptr<const rt::Transformer> export_runtime(const Model& model);

}  // namespace toga
