// toga search --mode quant: TOGA-q. Learn which input channels of every block linear stay at high
// precision (per layer: how many and which) by training a hypernetwork on the whole quantized
// model's loss, meet the budget exactly, then GPTQ with those salient sets into a checkpoint that
// also holds search.json (per-layer allocation, budget, training curve).
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/quantize_flags.h"
#include "quant/apply_plan.h"
#include "quant/calibration.h"
#include "quant/format.h"
#include "quant/recipes.h"
#include "search/quant_search.h"
#include "tokenizer/hf_json.h"
#include "util/error.h"

namespace toga::cli {

namespace {

struct SearchFlags : QuantizeFlags {
  std::string mode = "quant";
  double budget = 0;
  std::string budget_unit = "bits";
  QuantSearchOptions search;
  int order_windows = 32;
  std::string checkpoint;
  bool resume = false;
  std::string select = "order";
};

nlohmann::json search_report(const SearchFlags& f, const std::vector<MaskGroup>& groups, const SupernetQuantizers& q,
                             const std::vector<torch::Tensor>& masks, const nlohmann::json& salient_sets,
                             const QuantSearchResult& r) {
  const double realized = weight_bits(groups, masks, q).item<double>();
  nlohmann::json layers = nlohmann::json::array();
  for (size_t i = 0; i < groups.size(); ++i) {
    const auto& g = groups[i];
    layers.push_back({{"layer", g.layer},
                      {"kind", g.kind},
                      {"sites", g.sites},
                      {"channels", g.channels},
                      {"weight_rows", g.weight_rows},
                      {"salient_count", int64_t(masks[i].sum().item<double>())},
                      {"salient", salient_sets[g.sites.front()]["salient"]}});
  }
  nlohmann::json curve = nlohmann::json::array();
  for (const auto& s : r.curve)
    curve.push_back({{"step", s.step}, {"ce", s.ce}, {"bits", s.bits}, {"budget_term", s.budget_term},
                     {"tokens_per_second", s.tokens_per_second}});
  return {{"toga_search", 1},
          {"mode", "quant"},
          {"model", f.model},
          {"budget", {{"unit", f.budget_unit},
                      {"target", f.budget},
                      {"target_bits", f.search.budget_bits},
                      {"realized_bits", realized},
                      {"realized_fp16_fraction", realized / 16.0},
                      {"fixed_fraction_equivalent", fraction_for_bits(f.search.budget_bits, q)}}},
          {"quantizers", {{"weight_low", quant_spec_to_json(q.weight_low)},
                          {"weight_high", quant_spec_to_json(q.weight_high)},
                          {"act_low", quant_spec_to_json(q.act_low)},
                          {"act_high", quant_spec_to_json(q.act_high)}}},
          {"options", f.search.to_json()},
          {"selection", f.select},
          {"seconds", r.seconds},
          {"resumed_from", r.resumed_from},
          {"curve", curve},
          {"layers", layers},
          {"run", run_info(f.common)}};
}

}  // namespace

void register_search(CLI::App& app) {
  auto* cmd = app.add_subcommand("search", "TOGA-q: learn per-layer salient channels by training a hypernetwork, then GPTQ");
  auto f = std::make_shared<SearchFlags>();
  f->method = "atom";
  f->search.progress = true;
  cmd->add_option("model", f->model, "model to compress: HF directory, .gguf, llama2.c .bin")->required();
  cmd->add_option("output", f->output, "output directory (quantized checkpoint with search.json)")->required();
  cmd->add_option("--mode", f->mode, "what to search: quant (salient channels per layer)")->capture_default_str();
  cmd->add_option("--budget", f->budget, "target: average weight bits (--budget-unit bits) or size relative to FP16 (fp16)")->required();
  cmd->add_option("--budget-unit", f->budget_unit, "bits | fp16")->capture_default_str();
  add_quantizer_flags(cmd, *f);
  cmd->add_option("--steps", f->search.steps, "training steps")->capture_default_str();
  cmd->add_option("--batch", f->search.batch, "windows per step")->capture_default_str();
  cmd->add_option("--seqlen", f->search.seqlen, "tokens per training window")->capture_default_str();
  cmd->add_option("--lambda", f->search.lambda, "weight of the budget term")->capture_default_str();
  cmd->add_option("--tau", f->search.tau, "Gumbel-Sigmoid temperature")->capture_default_str();
  cmd->add_option("--lr", f->search.lr, "AdamW learning rate of the hypernetwork")->capture_default_str();
  cmd->add_option("--init-logit", f->search.init_logit, "prior logit magnitude (start: fixed fraction at the budget)")->capture_default_str();
  cmd->add_option("--order-windows", f->order_windows, "windows (of --seqlen) for the mean-|x| channel order")->capture_default_str();
  cmd->add_option("--select", f->select,
                  "final channels: order (learned count per layer, channels of largest mean |x|) | learned (the logits' own choice)")
      ->capture_default_str();
  cmd->add_option("--checkpoint", f->checkpoint, "search checkpoint file (default: OUTPUT.search.pt)");
  cmd->add_option("--checkpoint-every", f->search.checkpoint_every, "steps between checkpoints")->capture_default_str();
  cmd->add_flag("--resume", f->resume, "continue from the checkpoint (same options): the result is the uninterrupted run's");
  cmd->add_option("--save-dtype", f->save_dtype, "dtype of the unquantized tensors: fp32, bf16, fp16")->capture_default_str();
  cmd->add_flag("--force", f->force, "replace an earlier toga output at the output path");
  add_common_options(cmd, f->common);
  cmd->callback([f, cmd] {
    apply_common_options(f->common);
    if (f->select != "order" && f->select != "learned") fail("--select must be order or learned, got '{}'", f->select);
    if (f->mode != "quant") fail("--mode {}: only 'quant' (TOGA-q) is available; joint pruning is another issue", f->mode);
    const DType save = parse_storage_dtype(f->save_dtype, "--save-dtype");
    const QuantizeOptions opts = options_from_flags(*f, *cmd);
    SupernetQuantizers q{opts.weight_low, opts.weight_high, opts.act_low, opts.act_high};
    if (f->budget_unit == "bits") f->search.budget_bits = f->budget;
    else if (f->budget_unit == "fp16") f->search.budget_bits = f->budget * 16.0;
    else fail("--budget-unit must be bits or fp16, got '{}'", f->budget_unit);
    fraction_for_bits(f->search.budget_bits, q);  // an impossible budget fails before any work
    const std::string ckpt = f->checkpoint.empty() ? f->output + ".search.pt" : f->checkpoint;
    if (!f->resume && std::filesystem::exists(ckpt) && !f->force)
      fail_file(ckpt, "a search checkpoint is already there: --resume to continue it, --force to start over");
    // A new search writes the checkpoint file: the same rule as every other output (a resumed one reads it).
    check_output_paths(f->force, {f->output}, f->resume ? std::vector<std::string>{} : std::vector<std::string>{ckpt});
    f->search.checkpoint_path = ckpt;
    f->search.resume = f->resume;
    f->search.seed = f->seed;

    auto lm = load_model_and_tokenizer(f->model, f->common);
    const auto text = load_eval_text(f->calib_data);
    const auto tokens = tokenize_for_eval(*lm.tokenizer, text.text);
    f->search.seqlen = std::min(f->search.seqlen, lm.model.config.max_position_embeddings);
    auto groups = quant_mask_groups(lm.model);
    compute_channel_orders(lm.model, groups,
                           sample_calibration_windows(tokens, f->order_windows, f->search.seqlen, f->seed + 1));
    std::fprintf(stderr, "search: %zu mask groups, target %.4f weight bits (fixed fraction %.4f), %d steps of %d x %d tokens from %s\n",
                 groups.size(), f->search.budget_bits, fraction_for_bits(f->search.budget_bits, q), f->search.steps,
                 f->search.batch, f->search.seqlen, text.path.c_str());
    Supernet net(lm.model, groups, q);
    const QuantSearchResult r = train_quant_search(lm.model, net, tokens, f->search);
    const auto masks = budget_masks(f->select == "order" ? logits_in_channel_order(r.logits) : r.logits, groups, q,
                                    f->search.budget_bits);
    const nlohmann::json salient_sets = salient_sets_json(masks, groups);
    const nlohmann::json report_json = search_report(*f, groups, q, masks, salient_sets, r);

    // GPTQ with the learned salient sets, on the unmodified model in fp32.
    CommonOptions fp = f->common;
    fp.dtype = "fp32";
    auto base = load_model_and_tokenizer(f->model, fp);
    Plan plan = plan_from_masks(base.model, salient_sets, opts, "search");
    plan.recipe = "toga-q";
    plan.provenance = {{"search", f->search.to_json()}, {"realized_bits", report_json["budget"]["realized_bits"]}};
    const int calib_seqlen = std::min(f->calib_seqlen, base.model.config.max_position_embeddings);
    const auto calib = sample_calibration_windows(tokens, f->calib, calib_seqlen, f->seed);
    const auto report = apply_plan(base.model, plan, calib, "search");
    QuantizedCheckpointExtras extras;
    extras.base_model = {{"path", f->model},
                         {"calibration", {{"data", f->calib_data}, {"windows", f->calib}, {"seqlen", calib_seqlen}, {"seed", f->seed}}}};
    extras.files = hf_tokenizer_files(*lm.tokenizer);
    extras.files["search.json"] = report_json.dump(1);
    // What `toga quantize --salient-masks` reads: the same sets with other quantizer settings.
    extras.files["salient_masks.json"] = salient_sets.dump();
    extras.on_existing = f->force ? OnExisting::kReplace : OnExisting::kRefuse;
    save_quantized_checkpoint(f->output, base.model, report, save, extras);
    std::printf("| target bits | realized bits | fixed-fraction equivalent | steps | final CE | search time | GPTQ time |\n"
                "|---|---|---|---|---|---|---|\n| %.4f | %.4f | %.4f | %zu | %.4f | %.0fs | %.0fs |\n",
                f->search.budget_bits, report_json["budget"]["realized_bits"].get<double>(),
                fraction_for_bits(f->search.budget_bits, q), r.curve.size(), r.curve.empty() ? 0.0 : r.curve.back().ce,
                r.seconds, report.seconds);
  });
}

}  // namespace toga::cli
