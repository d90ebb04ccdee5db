// Writes an (unquantized, possibly pruned) in-memory model as a Hugging Face directory: the one
// list of Model::named_tensors, the config with per-layer shapes. Quantized models are written by
// save_quantized_checkpoint (quant/format.h), which replaces the quantized linears' weights.
#pragma once

#include <string>

#include "io/checkpoint.h"
#include "model/model.h"

namespace toga {

void save_model(const std::string& dir, const Model& model, DType dtype, const HFWriteOptions& options = {});

// Bytes of a tensor (moved to the CPU, made contiguous) and its safetensors dtype.
std::vector<uint8_t> tensor_bytes(const torch::Tensor& t);
DType safetensors_dtype(torch::Dtype d);
// The torch dtype of a floating-point storage dtype (F32, BF16, F16).
torch::Dtype torch_float_dtype(DType d);

}  // namespace toga
