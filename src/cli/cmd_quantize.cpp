// toga quantize: RTN, GPTQ or Atom-style mixed precision into a quantized checkpoint directory.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "cli/commands.h"
#include "cli/common.h"
#include "quant/calibration.h"
#include "quant/format.h"
#include "quant/apply_plan.h"
#include "quant/plan.h"
#include "quant/recipes.h"
#include "tokenizer/hf_json.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace toga::cli {

namespace {

struct QuantizeFlags {
  CommonOptions common;
  std::string model, output;
  std::string method = "rtn";
  int wbits = 4, abits = 16, high_bits = 8;
  int group_size = 0, act_group_size = 0;
  bool asymmetric = false, act_asymmetric = false;
  double salient_frac = 0.0;
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
};

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

// The recipe's defaults, overridden by exactly the flags the user gave (whether a flag was given,
// not whether its value differs from a default: `--weight-clip 1.0` under atom means 1.0).
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
  // The generic recipes reorder only when there is something salient to put last.
  if (f.method != "atom") o.reorder = o.salient_fraction > 0 || !o.salient_counts.empty();
  if (given("--no-reorder")) o.reorder = false;
  validate(o.weight_low);
  validate(o.weight_high);
  validate(o.act_low);
  validate(o.act_high);
  validate(o.kv);
  return o;
}

}  // namespace

void register_quantize(CLI::App& app) {
  auto* cmd = app.add_subcommand("quantize", "quantize a model (RTN, GPTQ, Atom-style mixed precision)");
  auto f = std::make_shared<QuantizeFlags>();
  cmd->add_option("model", f->model, "model to quantize: HF directory, .gguf, llama2.c .bin")->required();
  cmd->add_option("output", f->output, "output directory (quantized checkpoint, replaced atomically)")->required();
  cmd->add_option("--method", f->method, "recipe: rtn | gptq | atom (= reorder + 12.5% INT8 salient + GPTQ, KV4)")->capture_default_str();
  cmd->add_option("--plan", f->plan_file, "apply a Plan file (docs/FORMAT.md) instead of a recipe");
  cmd->add_option("--salient-masks", f->masks_file,
                  "JSON {site: 0/1 mask or {\"salient\": [channels]}}: per-layer salient sets (e.g. a search's), "
                  "other choices from the recipe and flags");
  cmd->add_option("--emit-plan", f->emit_plan, "write the resolved Plan (explicit orders and salient sets) as JSON");
  cmd->add_option("--wbits", f->wbits, "weight bits of the low-precision part (1 = binarization)")->capture_default_str();
  cmd->add_option("--abits", f->abits, "activation bits (16 = weight-only)")->capture_default_str();
  cmd->add_option("--high-bits", f->high_bits, "bits of the salient channels (weights and activations)")->capture_default_str();
  cmd->add_option("--group-size", f->group_size, "weight group size (0 = per output channel)")->capture_default_str();
  cmd->add_option("--act-group-size", f->act_group_size, "activation group size (0 = per token)")->capture_default_str();
  cmd->add_flag("--asym", f->asymmetric, "asymmetric weight quantization (default symmetric)");
  cmd->add_flag("--act-asym", f->act_asymmetric, "asymmetric activation quantization");
  cmd->add_option("--salient-frac", f->salient_frac, "fraction of input channels kept at --high-bits");
  cmd->add_option("--salient-counts", f->salient_counts, "JSON {site: count} with per-layer salient counts");
  cmd->add_flag("--no-reorder", f->no_reorder, "keep channel order (salient = the last channels as stored)");
  cmd->add_flag("--act-order", f->act_order, "GPTQ act-order (descending Hessian diagonal)");
  cmd->add_flag("--mse-clip", f->mse_clip, "search the weight clipping range per row (MSE, |e|^2.4)");
  cmd->add_flag("--binary-centered", f->binary_centered, "1-bit: binarize around the row/group mean");
  cmd->add_option("--weight-clip", f->weight_clip, "weight clip ratio")->capture_default_str();
  cmd->add_option("--act-clip", f->act_clip, "activation clip ratio")->capture_default_str();
  cmd->add_option("--calib", f->calib, "calibration windows")->capture_default_str();
  cmd->add_option("--calib-seqlen", f->calib_seqlen, "calibration window length (capped by context)")->capture_default_str();
  cmd->add_option("--calib-data", f->calib_data, "calibration text (WikiText-2 validation; train is not shipped)")->capture_default_str();
  cmd->add_option("--seed", f->seed, "calibration sampling seed")->capture_default_str();
  cmd->add_option("--save-dtype", f->save_dtype, "dtype of the unquantized tensors: fp32, bf16, fp16")->capture_default_str();
  cmd->add_option("--report", f->report_json, "write the quantization report (bits, per-layer losses) as JSON");
  cmd->add_flag("--force", f->force, "replace an earlier toga output at the output path (and --report file)");
  add_common_options(cmd, f->common);
  cmd->callback([f, cmd] {
    apply_common_options(f->common);
    const DType save = parse_storage_dtype(f->save_dtype, "--save-dtype");
    check_output_paths(f->force, {f->output}, {f->report_json, f->emit_plan});
    if (!f->plan_file.empty()) {
      static const char* recipe_flags[] = {"--method", "--wbits", "--abits", "--high-bits", "--group-size",
                                           "--act-group-size", "--asym", "--act-asym", "--salient-frac",
                                           "--salient-counts", "--no-reorder", "--act-order", "--mse-clip",
                                           "--binary-centered", "--weight-clip", "--act-clip", "--salient-masks",
                                           "--kv-bits"};
      for (const char* flag : recipe_flags)
        if (cmd->count(flag)) fail("{} cannot be combined with --plan: the Plan decides it", flag);
    }
    auto lm = load_model_and_tokenizer(f->model, f->common);
    Plan plan;
    std::string where = "flags";
    if (!f->plan_file.empty()) {
      plan = read_plan_file(f->plan_file);
      where = f->plan_file;
    } else {
      const QuantizeOptions opts = options_from_flags(*f, *cmd);
      if (!f->masks_file.empty()) {
        nlohmann::json masks;
        try {
          masks = nlohmann::json::parse(read_text_file(f->masks_file));
        } catch (const nlohmann::json::exception& e) {
          fail_file(f->masks_file, "invalid JSON: {}", e.what());
        }
        plan = plan_from_masks(lm.model, masks, opts, f->masks_file);
        where = f->masks_file;
      } else {
        plan = find_recipe(f->method).make(lm.model, opts);
      }
    }
    validate_plan(plan, lm.model, where);
    torch::Tensor calib;
    int calib_seqlen = std::min(f->calib_seqlen, lm.model.config.max_position_embeddings);
    if (plan.needs_calibration()) {
      const auto text = load_eval_text(f->calib_data);
      const auto tokens = tokenize_for_eval(*lm.tokenizer, text.text);
      calib = sample_calibration_windows(tokens, f->calib, calib_seqlen, f->seed);
      std::fprintf(stderr, "calibration: %d windows x %d tokens from %s (seed %llu)\n", f->calib, calib_seqlen,
                   text.path.c_str(), static_cast<unsigned long long>(f->seed));
    }
    const auto report = apply_plan(lm.model, plan, calib, where);
    QuantizedCheckpointExtras extras;
    extras.base_model = {{"path", f->model},
                         {"calibration", plan.needs_calibration()
                                             ? nlohmann::json{{"data", f->calib_data}, {"windows", f->calib},
                                                              {"seqlen", calib_seqlen}, {"seed", f->seed}}
                                             : nlohmann::json()}};
    extras.files = hf_tokenizer_files(*lm.tokenizer);
    extras.on_existing = f->force ? OnExisting::kReplace : OnExisting::kRefuse;
    save_quantized_checkpoint(f->output, lm.model, report, save, extras);
    if (!f->emit_plan.empty()) {
      write_plan_file(f->emit_plan, report.plan, f->force ? OnExisting::kReplace : OnExisting::kRefuse);
      std::fprintf(stderr, "wrote %s\n", f->emit_plan.c_str());
    }
    std::printf("| scheme | recipe | weight bits (codes) | weight bits (with scales) | act bits | KV bits | time |\n"
                "|---|---|---|---|---|---|---|\n| %s | %s | %.3f | %.3f | %.3f | %d | %.1fs |\n",
                scheme_name(report).c_str(), plan.recipe.c_str(), report.weight_bits_codes, report.weight_bits_total,
                report.act_bits, plan.kv.bits, report.seconds);
    if (!f->report_json.empty()) {
      nlohmann::json layers = nlohmann::json::array();
      for (const auto& q : report.linears)
        layers.push_back({{"site", q.site}, {"salient", q.salient}, {"in_features", q.perm.numel()},
                          {"method", q.method}, {"gptq_loss", q.gptq_loss}});
      write_json(f->report_json, {{"model", f->model},
                                  {"output", f->output},
                                  {"recipe", plan.recipe},
                                  {"provenance", plan.provenance},
                                  {"scheme", scheme_name(report)},
                                  {"weight_bits_codes", report.weight_bits_codes},
                                  {"weight_bits_total", report.weight_bits_total},
                                  {"act_bits", report.act_bits},
                                  {"seconds", report.seconds},
                                  {"layers", layers},
                                  {"run", run_info(f->common)}},
                 f->force);
    }
  });
}

}  // namespace toga::cli
