// toga's quantized checkpoint: a Hugging Face directory whose config.json carries a
// "quantization_config" (modelled on compressed-tensors) and whose safetensors hold, per quantized
// linear, bit-packed integer codes, fp16 scales and zero points, and the input-channel permutation.
// docs/FORMAT.md is the specification; this file is its one implementation.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/checkpoint.h"
#include "model/model.h"
#include "quant/apply_plan.h"

namespace toga {

// 2: the resolved Plan per layer (method, recipe), pruned per-layer shapes. 1 is still read.
constexpr int kQuantFormatVersion = 2;

// Packs codes [rows, in] (int8, each group's codes in its own range) row by row: every code is
// stored as the unsigned offset (code - code_min) in `bits` bits, least significant bit first,
// groups one after another, each row padded to whole bytes. uint8 [rows, row_bytes].
torch::Tensor pack_codes(const QuantizedWeight& w);
torch::Tensor unpack_codes(const torch::Tensor& packed, const std::vector<ColumnGroup>& groups, int64_t in,
                           const std::string& where);
int64_t packed_row_bytes(const std::vector<ColumnGroup>& groups);

struct QuantizedCheckpointExtras {
  nlohmann::json base_model;  // what was quantized, with which options (provenance)
  std::map<std::string, std::string> files;  // tokenizer files etc. to bundle
  OnExisting on_existing = OnExisting::kRefuse;  // whether an earlier toga output at `dir` may be replaced
};

// Bytes the block linears occupy in a quantized checkpoint, as written: packed codes; scales and
// zero points; index lists (input permutations and the blocks' pruning lists). config.json's
// quantization_config["storage"] holds them.
struct LinearStorage {
  uint64_t codes = 0, params = 0, indices = 0;
  nlohmann::json to_json() const { return {{"code_bytes", codes}, {"param_bytes", params}, {"index_bytes", indices}}; }
};

// Writes model (its non-quantized tensors in `dtype`, from Model::named_tensors) plus the
// quantized linears and the resolved Plan as a directory, atomically, at a new path or over what
// extras.on_existing allows (util/atomic_file.h). The scales and zero points in
// `report` must already be fp16-representable (they are when they come from apply_plan).
// Returns what the block linears take on disk.
LinearStorage save_quantized_checkpoint(const std::string& dir, const Model& model, const QuantizationReport& report,
                               DType dtype, const QuantizedCheckpointExtras& extras);

// The resolved Plan a quantized checkpoint was made with (explicit orders and salient sets, in
// source numbering): applying it to the base model reproduces the checkpoint's codes.
Plan plan_from_checkpoint(const Checkpoint& ck);

// The quantized linears stored in a checkpoint (codes, scales, zeros, permutation, partitions),
// validated: corrupt or inconsistent entries are errors naming the file and tensor.
std::vector<QuantizedLinear> read_quantized_linears(const Checkpoint& ck);

// The fake-quantized model a quantized checkpoint describes: dequantized weights in stored column
// order with the permutation, activation quantizers and the KV-cache quantizer attached.
Model load_quantized_model(const Checkpoint& ck, const LoadOptions& opts);

// Loads any checkpoint: quantized ones through load_quantized_model, others through load_model.
Model load_any_model(const Checkpoint& ck, const LoadOptions& opts);

}  // namespace toga
