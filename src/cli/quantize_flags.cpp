#include "cli/quantize_flags.h"

#include "util/atomic_file.h"
#include "util/error.h"

namespace toga::cli {

void add_quantizer_flags(CLI::App* cmd, QuantizeFlags& f) {
  cmd->add_option("--method", f.method, "recipe: rtn | gptq | atom (= reorder + 12.5% INT8 salient + GPTQ, KV4) | sparsegpt (50% unstructured + GPTQ) | billm (1-bit) | slim-llm | ptq161 | resq | spinquant | obr | obr-rtn (SpinQuant front end + 50% Wanda + OBR)")->capture_default_str();
  cmd->add_option("--wbits,--low-bits", f.wbits, "weight bits of the low-precision part (1 = binarization)")->capture_default_str();
  cmd->add_option("--abits", f.abits, "activation bits (16 = weight-only)")->capture_default_str();
  cmd->add_option("--high-bits", f.high_bits, "bits of the salient channels (weights and activations)")->capture_default_str();
  cmd->add_option("--group-size", f.group_size, "weight group size (0 = per output channel)")->capture_default_str();
  cmd->add_option("--act-group-size", f.act_group_size, "activation group size (0 = per token)")->capture_default_str();
  cmd->add_flag("--asym", f.asymmetric, "asymmetric weight quantization (default symmetric)");
  cmd->add_flag("--act-asym", f.act_asymmetric, "asymmetric activation quantization");
  cmd->add_option("--salient-frac", f.salient_frac, "fraction of input channels kept at --high-bits");
  cmd->add_option("--sparsity", f.sparsity, "fraction of weights pruned: inside GPTQ (gptq, spinquant: SparseGPT; sparsegpt: 0.5) or by Wanda (obr: 0.5)");
  cmd->add_option("--sparsity-pattern", f.sparsity_pattern, "unstructured | 2:4 (2 of every 4 columns; sets --sparsity 0.5)");
  cmd->add_option("--salient-counts", f.salient_counts, "JSON {site: count} with per-layer salient counts");
  cmd->add_flag("--no-reorder", f.no_reorder, "keep channel order (salient = the last channels as stored)");
  cmd->add_flag("--act-order", f.act_order, "GPTQ act-order (descending Hessian diagonal)");
  cmd->add_flag("--mse-clip", f.mse_clip, "search the weight clipping range per row (MSE, |e|^2.4)");
  cmd->add_flag("--binary-centered", f.binary_centered, "1-bit: binarize around the row/group mean");
  cmd->add_option("--weight-clip", f.weight_clip, "weight clip ratio")->capture_default_str();
  cmd->add_option("--act-clip", f.act_clip, "activation clip ratio")->capture_default_str();
  cmd->add_option("--refine-epochs", f.refine_epochs, "ptq161: epochs of block-wise scale learning over the calibration windows (recipe: 20)");
  cmd->add_option("--calib", f.calib, "calibration windows")->capture_default_str();
  cmd->add_option("--calib-seqlen", f.calib_seqlen, "calibration window length (capped by context)")->capture_default_str();
  cmd->add_option("--calib-data", f.calib_data, "calibration text (WikiText-2 validation; train is not shipped)")->capture_default_str();
  cmd->add_option("--seed", f.seed, "calibration sampling seed")->capture_default_str();
}

namespace {

std::map<std::string, int64_t> read_salient_counts(const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    fail_file(path, "invalid JSON: {}", e.what());
  }
  if (!j.is_object()) fail_file(path, "expected an object {{\"layers.N.self_attn.q_proj\": count, ...}}");
  std::map<std::string, int64_t> out;
  for (const auto& [k, v] : j.items()) {
    if (!v.is_number_integer()) fail_file(path, "count for '{}' is not an integer", k);
    out[k.rfind("model.", 0) == 0 ? k.substr(6) : k] = v.get<int64_t>();
  }
  return out;
}

}  // namespace

QuantizeOptions options_from_flags(const QuantizeFlags& f, const CLI::App& cmd) {
  const Recipe& recipe = find_recipe(f.method);
  QuantizeOptions o = recipe.defaults();
  auto given = [&](const char* flag) { return cmd.count(flag) > 0; };
  if (given("--wbits")) o.weight_low.bits = f.wbits;
  if (given("--asym")) o.weight_low.symmetric = !f.asymmetric;
  if (given("--group-size")) o.weight_low.group_size = f.group_size;
  if (given("--weight-clip")) o.weight_low.clip_ratio = f.weight_clip;
  if (given("--mse-clip")) o.weight_low.mse_clip = f.mse_clip;
  if (given("--binary-centered")) o.weight_low.binary_centered = f.binary_centered;
  if (given("--high-bits")) o.weight_high.bits = o.act_high.bits = f.high_bits;
  if (given("--abits")) o.act_low.bits = f.abits;
  if (given("--act-asym")) o.act_low.symmetric = !f.act_asymmetric;
  if (given("--act-group-size")) o.act_low.group_size = f.act_group_size;
  if (given("--act-clip")) o.act_low.clip_ratio = f.act_clip;
  // Weight-only: the salient activations stay unquantized too.
  if (!o.act_low.quantized()) o.act_high = {16};
  else if (!o.act_high.quantized()) o.act_high = {o.weight_high.bits, true, 0};
  if (given("--kv-bits")) o.kv = {f.common.kv_bits == 0 ? 16 : f.common.kv_bits, false, 0};
  if (given("--salient-frac")) o.salient_fraction = f.salient_frac;
  if (given("--salient-counts")) o.salient_counts = read_salient_counts(f.salient_counts);
  if (given("--act-order")) o.gptq.act_order = f.act_order;
  if (given("--sparsity")) o.sparsity = f.sparsity;
  if (given("--refine-epochs")) {
    if (f.refine_epochs < 0) fail("--refine-epochs must be >= 0, got {}", f.refine_epochs);
    o.refine_epochs = f.refine_epochs;
  }
  if (given("--sparsity-pattern")) {
    if (f.sparsity_pattern != "unstructured" && f.sparsity_pattern != "2:4")
      fail("--sparsity-pattern must be unstructured or 2:4, got '{}'", f.sparsity_pattern);
    o.sparsity_pattern = f.sparsity_pattern == "2:4" ? "2:4" : "";
    if (o.sparsity_pattern == "2:4") {
      if (given("--sparsity") && f.sparsity != 0.5) fail("--sparsity-pattern 2:4 prunes half: --sparsity must be 0.5");
      o.sparsity = 0.5;
    }
  }
  // The generic recipes reorder only when there is something salient to put last.
  if (f.method == "rtn" || f.method == "gptq" || f.method == "sparsegpt")
    o.reorder = o.salient_fraction > 0 || !o.salient_counts.empty();
  if (given("--no-reorder")) o.reorder = false;
  validate(o.weight_low);
  validate(o.weight_high);
  validate(o.act_low);
  validate(o.act_high);
  validate(o.kv);
  if (recipe.check) recipe.check(o);
  return o;
}

}  // namespace toga::cli
