#include <cstdio>
#include <cstdlib>
#include <string>

#include <malloc.h>
#include <unistd.h>

#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "util/error.h"

namespace {

// OpenMP reads its wait policy when the runtime loads, before main. Its default spins: when another
// process shares the cores, two spinning threads made a forward pass up to 10x slower here. So toga
// re-executes itself once with a passive policy unless the user chose one — except for the verbs
// that decode on the runtime forward (generate, bench), whose one-token steps run ~150 short
// parallel regions: waking sleeping threads for each made decoding 2.5x slower. Those spin briefly
// (GOMP_SPINCOUNT 10000, microseconds) before sleeping: on a quiet machine that keeps decode at the
// spinning speed, and beside another busy process it stayed stable (183 tokens/s) where libgomp's
// default long spin swung between 5 and 280. libtorch's bf16 elementwise kernels are faster with
// its AVX-512 build, which it picks from the environment too.
void set_runtime_environment(int argc, char** argv) {
  if (std::getenv("TOGA_ENV_SET")) return;
  setenv("TOGA_ENV_SET", "1", 1);
  bool changed = false;
  const bool decodes = argc > 1 && (std::string(argv[1]) == "generate" || std::string(argv[1]) == "bench");
  if (!std::getenv("OMP_WAIT_POLICY") && !std::getenv("GOMP_SPINCOUNT")) {
    if (decodes) setenv("GOMP_SPINCOUNT", "10000", 0);
    else setenv("OMP_WAIT_POLICY", "passive", 0);
    changed = true;
  }
  if (!std::getenv("ATEN_CPU_CAPABILITY") && __builtin_cpu_supports("avx512f"))
    setenv("ATEN_CPU_CAPABILITY", "avx512", 0);
  if (changed) execv("/proc/self/exe", argv);  // on failure, carry on as we are
}

}  // namespace

int main(int argc, char** argv) {
  set_runtime_environment(argc, argv);
  // Keep freed blocks for reuse: glibc's default returns every large temporary tensor to the
  // kernel, and page-faulting them back in cost more than the arithmetic on small models.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  CLI::App app{"toga: joint structured pruning and mixed-precision quantization of Llama-family models"};
  app.set_version_flag("--version", std::string("toga ") + TOGA_VERSION);
  app.require_subcommand(1);
  toga::cli::register_generate(app);
  toga::cli::register_eval(app);
  toga::cli::register_convert(app);
  toga::cli::register_quantize(app);
  toga::cli::register_search(app);
  toga::cli::register_info(app);
  toga::cli::register_bench(app);
  toga::cli::register_launch(app);
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
