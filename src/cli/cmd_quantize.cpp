// toga quantize: RTN, GPTQ or Atom-style mixed precision into a quantized checkpoint directory.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/quantize_flags.h"
#include "dist/layer_shards.h"
#include "quant/calibration.h"
#include "quant/format.h"
#include "quant/apply_plan.h"
#include "quant/plan.h"
#include "quant/recipes.h"
#include "quant/rotation.h"
#include "tokenizer/hf_json.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace toga::cli {

// How long a layer-sharded rank waits for the previous one, which quantizes every earlier block first.
constexpr double kPipelineWaitSeconds = 24 * 3600;

void register_quantize(CLI::App& app) {
  auto* cmd = app.add_subcommand("quantize", "quantize a model (RTN, GPTQ, Atom-style mixed precision)");
  auto f = std::make_shared<QuantizeFlags>();
  cmd->add_option("model", f->model, "model to quantize: HF directory, .gguf, llama2.c .bin")->required();
  cmd->add_option("output", f->output, "output directory (quantized checkpoint, replaced atomically)")->required();
  add_quantizer_flags(cmd, *f);
  cmd->add_option("--plan", f->plan_file, "apply a Plan file (docs/FORMAT.md) instead of a recipe");
  cmd->add_option("--salient-masks", f->masks_file,
                  "JSON {site: 0/1 mask or {\"salient\": [channels]}}: per-layer salient sets (e.g. a search's), "
                  "other choices from the recipe and flags");
  cmd->add_option("--emit-plan", f->emit_plan, "write the resolved Plan (explicit orders and salient sets) as JSON");
  cmd->add_option("--save-dtype", f->save_dtype, "dtype of the unquantized tensors: fp32, bf16, fp16")->capture_default_str();
  cmd->add_option("--rotate", f->rotate,
                  "fold a rotation into the weights before quantizing (QuaRot/SpinQuant's front end): norm gains folded, "
                  "R1 on the residual stream and R2 per layer on the value heads; hadamard (random-sign, any width "
                  "quant/hadamard.h builds) | rotation (random orthogonal)");
  cmd->add_option("--online-transform", f->online_transform,
                  "ResQ's online transform on the down_proj input: hadamard (default; refused at widths with no "
                  "construction) | rotation (random orthogonal, any width)");
  cmd->add_option("--rotation-steps", f->rotation_steps,
                  "SpinQuant: Cayley SGD steps, one calibration window each (default: one per --calib window)");
  cmd->add_option("--rotate-seed", f->rotate_seed, "seed of the rotation's signs / Gaussian draws")->capture_default_str();
  cmd->add_option("--report", f->report_json, "write the quantization report (bits, per-layer losses) as JSON");
  cmd->add_flag("--force", f->force, "replace an earlier toga output at the output path (and --report file)");
  add_distributed_options(cmd, f->dist, "quantization, layer-sharded: each process holds a range of blocks");
  add_common_options(cmd, f->common);
  cmd->callback([f, cmd] {
    apply_common_options(f->common);
    const DType save = parse_storage_dtype(f->save_dtype, "--save-dtype");
    f->dist.validate();
    const bool root = f->dist.rank == 0, sharded = f->dist.world_size > 1;
    if (root) check_output_paths(f->force, {f->output}, {f->report_json, f->emit_plan});
    // Layer-sharded (dist/layer_shards.h): this process loads and quantizes its blocks only.
    std::unique_ptr<Collective> comm;
    LayerShard shard;
    if (sharded) {
      if (!f->rotate.empty()) fail("--rotate cannot be layer-sharded: the rotation changes every block at once");
      f->dist.device = parse_device(f->common.device, f->dist.rank);
      f->common.device = f->dist.device.str();
      comm = std::make_unique<Collective>(f->dist);
      shard = pipeline_shard(*comm, open_checkpoint(f->model).config.num_hidden_layers, kPipelineWaitSeconds);
      std::fprintf(stderr, "rank %d of %d: blocks %d..%d\n", comm->rank(), comm->world_size(), shard.begin, shard.end - 1);
    }
    const auto started = std::chrono::steady_clock::now();
    if (!f->plan_file.empty()) {
      static const char* recipe_flags[] = {"--method", "--wbits", "--abits", "--high-bits", "--group-size",
                                           "--act-group-size", "--asym", "--act-asym", "--salient-frac",
                                           "--salient-counts", "--no-reorder", "--act-order", "--mse-clip",
                                           "--binary-centered", "--weight-clip", "--act-clip", "--salient-masks",
                                           "--kv-bits"};
      for (const char* flag : recipe_flags)
        if (cmd->count(flag)) fail("{} cannot be combined with --plan: the Plan decides it", flag);
    }
    auto lm = load_model_and_tokenizer(f->model, f->common, true, {shard.begin, shard.end});
    // The calibration windows, drawn once (a method that prepares the model and GPTQ see the same).
    torch::Tensor calib;
    const int calib_seqlen = std::min(f->calib_seqlen, lm.model.config.max_position_embeddings);
    auto calibration_windows = [&] {
      if (!calib.defined()) {
        const auto text = load_eval_text(f->calib_data);
        const auto tokens = tokenize_for_eval(*lm.tokenizer, text.text);
        calib = sample_calibration_windows(tokens, f->calib, calib_seqlen, f->seed);
        std::fprintf(stderr, "calibration: %d windows x %d tokens from %s (seed %llu)\n", f->calib, calib_seqlen,
                     text.path.c_str(), static_cast<unsigned long long>(f->seed));
      }
      return calib;
    };
    nlohmann::json rotation;
    if (!f->rotate.empty()) rotation = rotate_model(lm.model, {f->rotate, f->rotate_seed, true});
    Plan plan;
    std::string where = "flags";
    if (!f->plan_file.empty()) {
      plan = read_plan_file(f->plan_file);
      where = f->plan_file;
    } else {
      QuantizeOptions opts = options_from_flags(*f, *cmd);
      if (!f->online_transform.empty()) opts.online_transform = f->online_transform;
      opts.rotation_steps = f->rotation_steps;
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
        const Recipe& recipe = find_recipe(f->method);
        if (recipe.prepare) {  // the method rotates the model from calibration statistics first
          if (!rotation.is_null()) fail("--rotate cannot be combined with --method {}: it chooses its own rotation", f->method);
          if (sharded) fail("--method {} rotates every block at once: it cannot be layer-sharded", f->method);
          rotation = recipe.prepare(lm.model, calibration_windows(), opts);
        }
        plan = recipe.make(lm.model, opts);
      }
    }
    if (!rotation.is_null()) plan.provenance["rotation"] = rotation;
    validate_plan(plan, lm.model, where);
    if (plan.needs_calibration()) calibration_windows();
    if (sharded) {  // every rank must run the same quantization, or the pipeline would mix them
      const std::string plan_json = plan_to_json(plan).dump();
      comm->require_same_as_root(
          fmt::format("plan={} calibration={}", fingerprint(plan_json.data(), plan_json.size()),
                      calib.defined() ? fingerprint(calib.data_ptr(), calib.numel() * calib.element_size()) : "none"),
          "quantization");
    }
    auto report = apply_plan(lm.model, plan, calib, where, true, shard);
    if (sharded) {
      gather_reports(*comm, report, kPipelineWaitSeconds);
      report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      if (!root) {
        std::fprintf(stderr, "rank %d: blocks %d..%d quantized and sent to rank 0\n", comm->rank(), shard.begin,
                     shard.end - 1);
        return;
      }
    }
    QuantizedCheckpointExtras extras;
    extras.base_model = {{"path", f->model},
                         {"processes", f->dist.world_size},
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
      // Method-specific bit counts (BiLLM's three), averaged over the weights.
      std::map<std::string, double> detail_bits;
      double weights = 0;
      for (const auto& q : report.linears) {
        layers.push_back({{"site", q.site}, {"salient", q.salient}, {"in_features", q.perm.numel()},
                          {"method", q.method}, {"gptq_loss", q.gptq_loss}});
        if (!q.details.is_null()) layers.back()["details"] = q.details;
        const double n = double(q.rows()) * double(q.in_features());
        weights += n;
        for (const auto& [k, v] : q.details.items())
          if (k.rfind("bits_", 0) == 0) detail_bits[k] += n * v.get<double>();
      }
      nlohmann::json method_bits = nlohmann::json::object();
      for (const auto& [k, v] : detail_bits) method_bits[k] = v / weights;
      write_json(f->report_json, {{"model", f->model},
                                  {"output", f->output},
                                  {"recipe", plan.recipe},
                                  {"provenance", plan.provenance},
                                  {"scheme", scheme_name(report)},
                                  {"weight_bits_codes", report.weight_bits_codes},
                                  {"weight_bits_total", report.weight_bits_total},
                                  {"act_bits", report.act_bits},
                                  {"method_bits", method_bits},
                                  {"seconds", report.seconds},
                                  {"layers", layers},
                                  {"run", run_info(f->common)}},
                 f->force);
    }
  });
}

}  // namespace toga::cli
