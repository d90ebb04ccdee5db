// toga info: what a checkpoint holds (config, parameter count, tensors by dtype).
#include <cstdio>
#include <map>

#include "cli/commands.h"
#include "io/checkpoint.h"

namespace toga::cli {

void register_info(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "print a checkpoint's configuration and tensors");
  auto model = std::make_shared<std::string>();
  auto tensors = std::make_shared<bool>(false);
  cmd->add_option("model", *model, "HF directory, .gguf file or llama2.c .bin")->required();
  cmd->add_flag("--tensors", *tensors, "list every tensor");
  cmd->callback([model, tensors] {
    const Checkpoint ck = open_checkpoint(*model);
    std::printf("format: %s\n", ck.format.c_str());
    std::printf("config: %s\n", ck.config.to_hf_json().dump(2).c_str());
    std::printf("parameters: %lld\n", static_cast<long long>(ck.config.num_parameters()));
    std::map<std::string, int64_t> by_dtype;
    for (const auto& t : ck.tensors->tensors()) {
      by_dtype[dtype_name(t.dtype)] += t.numel();
      if (*tensors) std::printf("  %-55s %-5s %s\n", t.name.c_str(), dtype_name(t.dtype), shape_str(t.shape).c_str());
    }
    for (const auto& [d, n] : by_dtype) std::printf("  %s: %lld elements\n", d.c_str(), static_cast<long long>(n));
    if (!ck.quantization_config.is_null()) std::printf("quantization_config: %s\n", ck.quantization_config.dump(2).c_str());
  });
}

}  // namespace toga::cli
