// Opening any checkpoint a user has: a Hugging Face directory (config.json + safetensors, sharded or
// not), a GGUF file, or a llama2.c .bin. The result is a config plus tensors under HF names.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/model_config.h"
#include "io/safetensors.h"
#include "io/tensor_source.h"
#include "util/atomic_file.h"

namespace toga {

struct Checkpoint {
  std::string path;    // what the user named
  std::string format;  // "hf" | "gguf" | "llama2c"
  ModelConfig config;
  std::unique_ptr<TensorSource> tensors;
  // Anything beyond the architecture that a later stage needs (e.g. config.json's
  // "quantization_config"); null when absent.
  nlohmann::json quantization_config;
};

// Dispatches on what `path` is: a directory (HF), a file ending in .gguf or starting with the GGUF
// magic, or a llama2.c legacy .bin. Errors name the path and the problem.
Checkpoint open_checkpoint(const std::string& path);

// Individual formats (implemented beside their parsers).
Checkpoint open_hf_checkpoint(const std::string& dir);
Checkpoint open_gguf_checkpoint(const std::string& path);
Checkpoint open_llama2c_checkpoint(const std::string& path);

struct HFWriteOptions {
  // Above this many tensor bytes the weights are split into model-0000i-of-0000N.safetensors
  // shards plus model.safetensors.index.json (Hugging Face's default is 5 GB).
  uint64_t max_shard_bytes = 5'000'000'000ULL;
  // Merged over config.to_hf_json() at the top level (e.g. {"quantization_config": {...}}).
  nlohmann::json extra_config = nlohmann::json::object();
  // Further files written into the directory verbatim, name -> content (tokenizer.json, ...).
  std::map<std::string, std::string> extra_files;
  // The safetensors __metadata__ of every shard; transformers refuses files without "format".
  std::map<std::string, std::string> metadata = {{"format", "pt"}};
  // What may be at `dir` already (util/atomic_file.h): by default only a new path is written.
  OutputDirPolicy output;
};

// Writes a Hugging Face checkpoint directory (config.json, weights, extra files, toga's output
// marker) atomically as a whole, at a new path or over what options.output allows. Tensors are stored in the given order and dtypes, unchecked against the
// config so that quantized layouts with extra tensors can be written too.
void write_hf_checkpoint(const std::string& dir, const ModelConfig& config, const std::vector<TensorToWrite>& tensors,
                         const HFWriteOptions& options = {});

}  // namespace toga
