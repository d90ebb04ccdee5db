// Opening any checkpoint a user has: a Hugging Face directory (config.json + safetensors, sharded or
// not), a GGUF file, or a llama2.c .bin. The result is a config plus tensors under HF names.
#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "io/model_config.h"
#include "io/tensor_source.h"

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

}  // namespace toga
