// The quantizer flags `toga quantize` and `toga search` share, and the one place they become
// QuantizeOptions: a recipe's defaults overridden by exactly the flags the user gave.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

#include "cli/common.h"
#include "quant/recipes.h"

namespace toga::cli {

struct QuantizeFlags {
  CommonOptions common;
  std::string model, output;
  DistributedOptions dist = DistributedOptions::from_environment();
  std::string method = "rtn";
  int wbits = 4, abits = 16, high_bits = 8;
  int group_size = 0, act_group_size = 0;
  bool asymmetric = false, act_asymmetric = false;
  double salient_frac = 0.0;
  double sparsity = 0.0;
  std::string sparsity_pattern;
  std::string salient_counts;
  bool no_reorder = false, act_order = false, mse_clip = false, binary_centered = false;
  double weight_clip = 1.0, act_clip = 1.0;
  int calib = 128, calib_seqlen = 2048;
  uint64_t seed = 0;
  std::string calib_data = "wikitext2-valid";
  std::string save_dtype = "fp32";
  std::string report_json;
  std::string plan_file, masks_file, emit_plan;
  bool force = false;
  std::string rotate;        // quantize: fold a rotation into the weights first (quant/rotation.h)
  uint64_t rotate_seed = 1;
  std::string online_transform;  // quantize: rotation methods' online transform
  int rotation_steps = 0;        // quantize: SpinQuant's training steps
  int refine_epochs = 20;        // quantize: PTQ1.61's block-wise epochs
};

void add_quantizer_flags(CLI::App* cmd, QuantizeFlags& f);
// The recipe's defaults, overridden by exactly the flags the user gave (whether a flag was given,
// not whether its value differs from a default: `--weight-clip 1.0` under atom means 1.0).
QuantizeOptions options_from_flags(const QuantizeFlags& f, const CLI::App& cmd);

}  // namespace toga::cli
