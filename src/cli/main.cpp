#include <cstdio>
#include <cstdlib>

#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "util/error.h"

int main(int argc, char** argv) {
  // libtorch's bf16 elementwise kernels are faster with its AVX-512 build; it reads this once.
  if (!std::getenv("ATEN_CPU_CAPABILITY") && __builtin_cpu_supports("avx512f"))
    setenv("ATEN_CPU_CAPABILITY", "avx512", 0);
  CLI::App app{"toga: joint structured pruning and mixed-precision quantization of Llama-family models"};
  app.set_version_flag("--version", std::string("toga ") + TOGA_VERSION);
  app.require_subcommand(1);
  toga::cli::register_generate(app);
  toga::cli::register_eval(app);
  toga::cli::register_convert(app);
  toga::cli::register_quantize(app);
  toga::cli::register_info(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const toga::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  return 0;
}
