// toga convert: any checkpoint (GGUF, llama2.c, HF) to a complete Hugging Face directory.
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "cli/common.h"
#include "io/checkpoint.h"
#include "tokenizer/hf_json.h"
#include "util/error.h"
#include "util/half.h"

namespace fs = std::filesystem;

namespace toga::cli {

namespace {

// Decoded tensor bytes in the requested storage dtype.
std::vector<uint8_t> encode(const std::vector<float>& v, DType d) {
  std::vector<uint8_t> out(v.size() * dtype_size(d));
  if (d == DType::F32) {
    std::memcpy(out.data(), v.data(), out.size());
  } else {
    auto* p = reinterpret_cast<uint16_t*>(out.data());
    for (size_t i = 0; i < v.size(); ++i) p[i] = d == DType::BF16 ? float_to_bf16(v[i]) : float_to_fp16(v[i]);
  }
  return out;
}

}  // namespace

void register_convert(CLI::App& app) {
  auto* cmd = app.add_subcommand("convert", "write any checkpoint as a Hugging Face directory (safetensors)");
  struct Opts {
    std::string input, output, dtype = "fp32", tokenizer;
    uint64_t shard_mb = 5000;
    bool force = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("input", o->input, "GGUF file, llama2.c .bin or HF directory")->required();
  cmd->add_option("output", o->output, "output directory: a new path (or, with --force, an earlier toga output)")
      ->required();
  cmd->add_option("--dtype", o->dtype, "storage dtype: fp32, bf16, fp16")->capture_default_str();
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer to bundle (default: the model's own)");
  cmd->add_option("--shard-mb", o->shard_mb, "split weights into shards above this size (MB)")->capture_default_str();
  cmd->add_flag("--force", o->force, "replace an earlier toga output at the output path");
  cmd->callback([o] {
    const DType dt = parse_storage_dtype(o->dtype, "--dtype");
    check_output_paths(o->force, {o->output});
    Checkpoint ck = open_checkpoint(o->input);
    check_tensors_match_config(*ck.tensors, ck.config);
    ModelConfig config = ck.config;
    config.torch_dtype = dt == DType::F32 ? "float32" : dt == DType::BF16 ? "bfloat16" : "float16";

    std::vector<std::vector<uint8_t>> storage;
    std::vector<TensorToWrite> tensors;
    for (const auto& [name, shape] : expected_tensors(config)) {
      const TensorInfo info = ck.tensors->info(name);
      if (is_index_tensor(name)) {  // pruned blocks' channel lists: integers, copied as stored
        storage.push_back(ck.tensors->read_bytes(name));
        tensors.push_back({name, info.dtype, shape, storage.back().data()});
        continue;
      }
      std::vector<float> v(static_cast<size_t>(info.numel()));
      ck.tensors->read_f32(name, v.data());
      ck.tensors->release(name);
      for (size_t i = 0; i < v.size(); ++i)
        if (!std::isfinite(v[i]))
          fail_file(info.file.empty() ? o->input : info.file, "tensor '{}' holds a non-finite value at index {}", name, i);
      storage.push_back(encode(v, dt));
      tensors.push_back({name, dt, shape, storage.back().data()});
    }

    HFWriteOptions wo;
    wo.max_shard_bytes = o->shard_mb * 1000000ull;
    wo.extra_files = hf_tokenizer_files(*load_tokenizer(o->input, o->tokenizer));
    nlohmann::json gen = {{"do_sample", false}};
    if (config.bos_token_id >= 0) gen["bos_token_id"] = config.bos_token_id;
    if (!config.eos_token_ids.empty())
      gen["eos_token_id"] = config.eos_token_ids.size() == 1 ? nlohmann::json(config.eos_token_ids[0])
                                                             : nlohmann::json(config.eos_token_ids);
    wo.extra_files["generation_config.json"] = gen.dump(2) + "\n";
    wo.output = {"convert", o->force ? OnExisting::kReplace : OnExisting::kRefuse};
    write_hf_checkpoint(o->output, config, tensors, wo);
    std::fprintf(stderr, "wrote %s (%zu tensors, %s)\n", o->output.c_str(), tensors.size(), config.torch_dtype.c_str());
  });
}

}  // namespace toga::cli
