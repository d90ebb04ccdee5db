#include "cli/common.h"

#include "model/runtime_export.h"

#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>

#include "data/text.h"
#include "model/runtime_export.h"
#include "model/threads.h"
#include "quant/format.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace toga::cli {

void add_common_options(CLI::App* cmd, CommonOptions& o) {
  cmd->add_option("--threads,-t", o.threads, "CPU threads (default: OMP_NUM_THREADS, else all available cores)");
  cmd->add_option("--dtype", o.dtype, "compute dtype: fp32 (default), bf16, fp16")->capture_default_str();
  cmd->add_option("--device", o.device, "cpu, or cuda / cuda:N in a CUDA build (scripts/build_cuda.sh)")->capture_default_str();
  cmd->add_option("--tokenizer", o.tokenizer, "tokenizer file or directory (default: found beside the model)");
  cmd->add_option("--kv-bits", o.kv_bits,
                  "override KV-cache quantization: 16 = none, 2..8 = asymmetric per token and head (default: "
                  "as the checkpoint says)");
  cmd->add_flag("--fake-quant", o.fake_quant,
                "run quantized checkpoints as fake-quantized floats (the reference path) instead of the packed integer kernels");
  cmd->add_option("--lm-head", o.lm_head,
                  "as-stored, or int8: an FP lm_head quantized per row (symmetric RTN) at load, in every forward")
      ->check(CLI::IsMember({"as-stored", "int8"}))
      ->capture_default_str();
}

void apply_common_options(const CommonOptions& o) { set_threads(o.threads); }

LoadedModel load_model_and_tokenizer(const std::string& path, const CommonOptions& o, bool need_tokenizer,
                                     std::pair<int, int> layers) {
  LoadedModel lm;
  lm.path = path;
  LoadOptions opts;
  opts.dtype = parse_dtype(o.dtype);
  opts.device = parse_device(o.device, DistributedOptions::from_environment().rank);
  opts.packed_kernels = !o.fake_quant && opts.device.is_cpu();  // the packed kernels are CPU code
  opts.layer_begin = layers.first;
  opts.layer_end = layers.second;
  opts.embeddings = layers.first == 0;
  const Checkpoint ck = open_checkpoint(path);
  if (layers != std::pair<int, int>{0, -1} && !ck.quantization_config.is_null())
    fail_file(path, "a layer-sharded run reads unquantized checkpoints only");
  lm.model = load_any_model(ck, opts);
  if (o.lm_head == "int8") use_int8_lm_head(lm.model);
  if (o.kv_bits != 0) {
    QuantSpec kv{o.kv_bits, false, 0};
    validate(kv);
    attach_kv_quantizer(lm.model, kv);
  }
  if (need_tokenizer) {
    lm.tokenizer = load_tokenizer(path, o.tokenizer);
    if (lm.tokenizer->vocab_size() > lm.model.config.vocab_size)
      fail_file(lm.tokenizer->source, "tokenizer has {} tokens but the model only {}", lm.tokenizer->vocab_size(),
                lm.model.config.vocab_size);
  }
  return lm;
}

torch::Device parse_device(const std::string& name, int rank) {
  if (name == "cpu") return torch::kCPU;
  if (name != "cuda" && name.rfind("cuda:", 0) != 0) fail("unknown device '{}' (use cpu, cuda or cuda:N)", name);
#ifdef TOGA_CUDA
  if (!torch::cuda::is_available()) fail("--device {}: no CUDA device is visible (driver, CUDA_VISIBLE_DEVICES)", name);
#else
  fail("--device {}: this toga was built against a CPU libtorch (build the CUDA one with scripts/build_cuda.sh)", name);
#endif
  const int gpus = int(torch::cuda::device_count());
  int index = 0;
  if (name == "cuda") {
    const char* local = std::getenv("LOCAL_RANK");
    index = local ? std::atoi(local) % gpus : rank % gpus;
  } else {
    index = std::atoi(name.c_str() + 5);
    if (index < 0 || index >= gpus) fail("--device {}: this machine has {} CUDA device(s)", name, gpus);
  }
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
}

void add_distributed_options(CLI::App* cmd, DistributedOptions& d, const std::string& what) {
  cmd->add_option("--world-size", d.world_size, "processes sharing the " + what + " (env TOGA_WORLD_SIZE; `toga launch` sets it)");
  cmd->add_option("--rank", d.rank, "this process's rank, 0..world-size-1 (env TOGA_RANK); rank 0 writes the outputs");
  cmd->add_option("--master", d.master, "rank 0's ADDR:PORT, where the ranks meet (env TOGA_MASTER)")->capture_default_str();
  cmd->add_option("--dist-timeout", d.timeout_seconds, "seconds a process waits for a silent peer before failing")
      ->capture_default_str();
}

std::string shared_data_path(const std::string& rel) {
  std::vector<std::string> roots;
  if (const char* env = std::getenv("TOGA_DATA")) roots.push_back(env);
  roots.push_back("../shared/data");
  roots.push_back(std::string(TOGA_SOURCE_DIR) + "/../shared/data");
  for (const auto& r : roots)
    if (fs::exists(r + "/" + rel)) return r + "/" + rel;
  fail("cannot find shipped data '{}' (looked under $TOGA_DATA, ../shared/data and {}/../shared/data)", rel,
       TOGA_SOURCE_DIR);
}

EvalText load_eval_text(const std::string& dataset) {
  EvalText t;
  t.name = dataset;
  if (dataset == "wikitext2" || dataset == "wikitext2-valid") {
    t.path = shared_data_path(dataset == "wikitext2" ? "text/wikitext-2-raw/wiki.test.raw"
                                                     : "text/wikitext-2-raw/wiki.valid.raw");
    t.text = gptq_wikitext_text(t.path);
    t.protocol = "GPTQ: lines (whitespace-only lines empty) joined with \"\\n\\n\", tokenized once";
  } else if (dataset == "c4") {
    t.path = shared_data_path("text/c4/c4-validation-docs.jsonl");
    t.text = jsonl_text(t.path, "text", " ");
    t.name = "c4 (shared sample)";
    t.protocol = "GPTQ C4 procedure on the shared 2000-document sample: documents joined with \" \"";
  } else if (dataset == "tinystories") {
    t.path = shared_data_path("text/tinystories/TinyStories-valid-first-1000.txt");
    t.text = read_text(t.path);
    t.protocol = "raw file, tokenized once";
  } else {
    t.path = dataset;
    t.text = read_text(dataset);
    t.protocol = "raw file, tokenized once";
  }
  return t;
}

std::vector<int> tokenize_for_eval(const Tokenizer& tok, const std::string& text) {
  std::vector<int> ids = tok.encode(text, /*allow_special=*/false);
  if (tok.add_bos && tok.bos_id >= 0) ids.insert(ids.begin(), tok.bos_id);
  return ids;
}

nlohmann::json run_info(const CommonOptions& o, const Model* model) {
  char when[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  nlohmann::json j = {{"toga_version", TOGA_VERSION}, {"threads", at::get_num_threads()}, {"dtype", o.dtype}, {"date", when}};
  if (model) {
    std::map<std::string, int> kernels;
    auto count = [&](const LinearSite& s) { ++kernels[s.kernel ? s.kernel->name() : "dense"]; };
    for (const LinearSite* s : model->block_sites()) count(*s);
    count(model->lm_head);
    j["linear_kernels"] = kernels;
  }
  return j;
}

std::shared_ptr<const rt::Transformer> choose_engine(const Model& model, const CommonOptions& o, const std::string& engine,
                                                     const char* verb) {
  if (engine == "torch" || (engine == "auto" && (o.dtype != "fp32" || o.fake_quant))) return nullptr;
  try {
    return export_runtime(model, {o.lm_head});
  } catch (const Error& e) {
    if (engine == "runtime") throw;
    std::fprintf(stderr, "[%s] libtorch forward: %s\n", verb, e.what());
    return nullptr;
  }
}

void add_engine_option(CLI::App* cmd, std::string& engine) {
  cmd->add_option("--engine", engine,
                  "auto: the libtorch-free runtime forward when it can run the model (fp32, no --fake-quant), else "
                  "libtorch; runtime; torch")
      ->check(CLI::IsMember({"auto", "runtime", "torch"}))
      ->capture_default_str();
}

void write_json(const std::string& path, const nlohmann::json& j, bool force) {
  write_text_atomically(path, j.dump(2) + "\n", force ? OnExisting::kReplace : OnExisting::kRefuse);
  std::fprintf(stderr, "wrote %s\n", path.c_str());
}

void check_output_paths(bool force, const std::vector<std::string>& dirs, const std::vector<std::string>& files) {
  const OnExisting on = force ? OnExisting::kReplace : OnExisting::kRefuse;
  for (const auto& d : dirs)
    if (!d.empty()) check_output_dir(d, on);
  for (const auto& f : files)
    if (!f.empty()) check_output_file(f, on);
}

DType parse_storage_dtype(const std::string& value, const std::string& flag) {
  if (value == "fp32" || value == "float32") return DType::F32;
  if (value == "bf16" || value == "bfloat16") return DType::BF16;
  if (value == "fp16" || value == "float16") return DType::F16;
  fail("unknown {} '{}' (use fp32, bf16 or fp16)", flag, value);
}

}  // namespace toga::cli
