// toga quantize: RTN, GPTQ or Atom-style mixed precision into a quantized checkpoint directory.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "cli/commands.h"
#include "cli/common.h"
#include "quant/calibration.h"
#include "quant/format.h"
#include "quant/quantize_model.h"
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

QuantizeOptions options_from_flags(const QuantizeFlags& f) {
  QuantizeOptions o;
  o.method = f.method;
  o.weight_low = {f.wbits, !f.asymmetric, f.group_size, f.weight_clip, f.mse_clip, f.binary_centered};
  o.weight_high = {f.high_bits, true, 0};
  o.act_low = {f.abits, !f.act_asymmetric, f.act_group_size, f.act_clip};
  o.act_high = {f.abits >= 16 ? 16 : f.high_bits, true, 0};
  o.kv = {f.common.kv_bits == 0 ? 16 : f.common.kv_bits, false, 0};  // --kv-bits: stored in the checkpoint
  o.salient_fraction = f.salient_frac;
  if (!f.salient_counts.empty()) o.salient_counts = read_salient_counts(f.salient_counts);
  o.reorder = !f.no_reorder && (f.salient_frac > 0 || !o.salient_counts.empty());
  o.act_order = f.act_order;
  if (f.method == "atom") {
    // Atom (RECIPES.md): reorder by mean |x|, 12.5% salient INT8, INT4 weights and activations in
    // groups of 128 (weight clip 0.85, activation clip 0.9), GPTQ, KV4 — wherever the user kept
    // toga's generic defaults.
    o.method = "gptq";
    o.reorder = true;
    if (f.salient_frac == 0 && o.salient_counts.empty()) o.salient_fraction = 0.125;
    if (f.group_size == 0) o.weight_low.group_size = 128;
    if (f.weight_clip == 1.0) o.weight_low.clip_ratio = 0.85;
    if (f.abits < 16 && f.act_group_size == 0) o.act_low.group_size = 128;
    if (f.abits < 16 && f.act_clip == 1.0) o.act_low.clip_ratio = 0.9;
    if (f.common.kv_bits == 0) o.kv.bits = 4;
  }
  if (o.method != "rtn" && o.method != "gptq") fail("--method must be rtn, gptq or atom, got '{}'", f.method);
  return o;
}

}  // namespace

void register_quantize(CLI::App& app) {
  auto* cmd = app.add_subcommand("quantize", "quantize a model (RTN, GPTQ, Atom-style mixed precision)");
  auto f = std::make_shared<QuantizeFlags>();
  cmd->add_option("model", f->model, "model to quantize: HF directory, .gguf, llama2.c .bin")->required();
  cmd->add_option("output", f->output, "output directory (quantized checkpoint, replaced atomically)")->required();
  cmd->add_option("--method", f->method, "rtn | gptq | atom (= reorder + 12.5% INT8 salient + GPTQ)")->capture_default_str();
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
  cmd->callback([f] {
    apply_common_options(f->common);
    QuantizeOptions opts = options_from_flags(*f);
    const DType save = parse_storage_dtype(f->save_dtype, "--save-dtype");
    check_output_paths(f->force, {f->output}, {f->report_json});
    auto lm = load_model_and_tokenizer(f->model, f->common);
    torch::Tensor calib;
    int calib_seqlen = std::min(f->calib_seqlen, lm.model.config.max_position_embeddings);
    if (opts.needs_calibration()) {
      const auto text = load_eval_text(f->calib_data);
      const auto tokens = tokenize_for_eval(*lm.tokenizer, text.text);
      calib = sample_calibration_windows(tokens, f->calib, calib_seqlen, f->seed);
      std::fprintf(stderr, "calibration: %d windows x %d tokens from %s (seed %llu)\n", f->calib, calib_seqlen,
                   text.path.c_str(), static_cast<unsigned long long>(f->seed));
    }
    const auto report = quantize_model(lm.model, opts, calib);
    QuantizedCheckpointExtras extras;
    extras.base_model = {{"path", f->model},
                         {"calibration", opts.needs_calibration()
                                             ? nlohmann::json{{"data", f->calib_data}, {"windows", f->calib},
                                                              {"seqlen", calib_seqlen}, {"seed", f->seed}}
                                             : nlohmann::json()}};
    extras.files = hf_tokenizer_files(*lm.tokenizer);
    extras.on_existing = f->force ? OnExisting::kReplace : OnExisting::kRefuse;
    save_quantized_checkpoint(f->output, lm.model, opts, report, save, extras);
    std::printf("| scheme | method | weight bits (codes) | weight bits (with scales) | act bits | KV bits | time |\n"
                "|---|---|---|---|---|---|---|\n| %s | %s | %.3f | %.3f | %.3f | %d | %.1fs |\n",
                scheme_name(report).c_str(), f->method.c_str(), report.weight_bits_codes, report.weight_bits_total,
                report.act_bits, opts.kv.bits, report.seconds);
    if (!f->report_json.empty()) {
      nlohmann::json layers = nlohmann::json::array();
      for (const auto& q : report.linears)
        layers.push_back({{"site", q.site}, {"salient", q.salient}, {"in_features", q.perm.numel()},
                          {"gptq_loss", q.gptq_loss}});
      write_json(f->report_json, {{"model", f->model},
                                  {"output", f->output},
                                  {"options", opts.to_json()},
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
