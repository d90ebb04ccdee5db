// What every verb shares: thread and dtype flags, loading a model and its tokenizer from any path,
// resolving the shipped data, evaluation text, and JSON results stamped with run information.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <memory>
#include <string>

#include "dist/collective.h"

#include "model/model.h"
#include "runtime/transformer.h"
#include "tokenizer/tokenizer.h"

namespace toga::cli {

struct CommonOptions {
  int threads = 0;  // 0 = all available cores
  std::string dtype = "fp32";
  std::string tokenizer;  // override the tokenizer found beside the model
  int kv_bits = 0;        // 0: as the checkpoint says; 16: unquantized; 2..8: fake-quantize the KV cache
  bool fake_quant = false;  // quantized checkpoints on fake-quantized floats instead of the packed kernels
  std::string lm_head = "as-stored";  // or "int8": per-row RTN at load (model/runtime_export.h)
  std::string device = "cpu";  // "cuda" / "cuda:N" in a CUDA build (scripts/build_cuda.sh)
};

// The torch device --device names; a bare "cuda" in a process of a distributed run is the GPU of
// its local rank (LOCAL_RANK, else the rank modulo the GPUs), as torchrun assigns them.
torch::Device parse_device(const std::string& name, int rank = 0);

void add_common_options(CLI::App* cmd, CommonOptions& o);
// Sets threads; call first in every verb.
void apply_common_options(const CommonOptions& o);

struct LoadedModel {
  std::string path;
  Model model;
  std::unique_ptr<Tokenizer> tokenizer;
};

// Any checkpoint toga reads: HF directory (plain or quantized), GGUF file, llama2.c .bin.
// `layers`: a layer-sharded rank's blocks (LoadOptions::layer_begin/end; the embedding only with block
// 0); the others' linears are placeholders.
LoadedModel load_model_and_tokenizer(const std::string& path, const CommonOptions& o, bool need_tokenizer = true,
                                     std::pair<int, int> layers = {0, -1});

// --world-size, --rank, --master, --dist-timeout (defaults from the environment: TOGA_* or torchrun's).
void add_distributed_options(CLI::App* cmd, DistributedOptions& d, const std::string& what);

// A path under the shipped data directory: $TOGA_DATA, else ../shared/data from the working
// directory, else the one beside the source tree.
std::string shared_data_path(const std::string& rel);

// Evaluation text by name (wikitext2 = WikiText-2 test with the GPTQ protocol, wikitext2-valid,
// c4 = the shared C4 validation sample joined with " ", tinystories) or a plain text file.
struct EvalText {
  std::string name;  // what the JSON reports
  std::string path;
  std::string text;
  std::string protocol;
};
EvalText load_eval_text(const std::string& dataset);

// Tokens of an evaluation text with the model's BOS once at the start when its tokenizer adds one.
std::vector<int> tokenize_for_eval(const Tokenizer& tok, const std::string& text);

// Version, threads, dtype, date; with a model, also which kernels its linear layers ran on
// ({"packed-avx512vnni": 210, "dense": 1}): a measured number says which path made it.
nlohmann::json run_info(const CommonOptions& o, const Model* model = nullptr);

// The forward a verb runs: `engine` "runtime" (the libtorch-free forward; an error when it cannot run
// the model), "torch", or "auto" (runtime for fp32 without --fake-quant when export_runtime can
// build it, else libtorch with the reason on stderr). Null = libtorch.
std::shared_ptr<const rt::Transformer> choose_engine(const Model& model, const CommonOptions& o, const std::string& engine,
                                                     const char* verb);
// Adds the --engine flag (default auto).
void add_engine_option(CLI::App* cmd, std::string& engine);
// Writes JSON atomically (and prints where) to a new path, or with `force` over an existing file.
void write_json(const std::string& path, const nlohmann::json& j, bool force);

// Refuses, before any work, outputs whose paths the rule in util/atomic_file.h does not allow
// (`force` = the verb's --force). Empty paths (options not given) are skipped.
void check_output_paths(bool force, const std::vector<std::string>& dirs, const std::vector<std::string>& files = {});

// A storage dtype flag: fp32/float32, bf16/bfloat16, fp16/float16; anything else is an error naming
// `flag`.
DType parse_storage_dtype(const std::string& value, const std::string& flag);

}  // namespace toga::cli
