// One verb per job; each registers its subcommand and flags.
#pragma once

#include <CLI/CLI.hpp>

namespace toga::cli {

void register_generate(CLI::App& app);
void register_eval(CLI::App& app);
void register_eval_tasks(CLI::App* eval);
void register_convert(CLI::App& app);
void register_info(CLI::App& app);
void register_quantize(CLI::App& app);
void register_search(CLI::App& app);
void register_bench(CLI::App& app);
void register_launch(CLI::App& app);

}  // namespace toga::cli
