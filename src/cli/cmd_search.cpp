// toga search: learn masks by training a hypernetwork on the whole compressed model's loss, meet the
// budget exactly, then write the compressed model with search.json (per-layer allocation, budget,
// training curve).
//   --mode quant  TOGA-q: which input channels of every block linear stay at high precision; GPTQ.
//   --mode joint  TOGA: DISP-LLM structured pruning and those precision masks in one search; the
//                 kept channels become smaller dense matrices, then reorder and GPTQ.
//   --mode prune  DISP-LLM alone (its recipe's defaults): a pruned FP checkpoint, which `toga
//                 quantize` can compress further (DISP-LLM → Atom-style / GPTQ).
// Several processes (`toga launch -n N search ...`, or --world-size/--rank/--master on each machine)
// share each step's batch (docs/DISTRIBUTED.md); rank 0 writes every output.
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/quantize_flags.h"
#include "model/save.h"
#include "model/structure.h"
#include "quant/apply_plan.h"
#include "quant/calibration.h"
#include "quant/format.h"
#include "quant/recipes.h"
#include "search/train.h"
#include "tokenizer/hf_json.h"
#include "util/error.h"

namespace toga::cli {

namespace {

struct SearchFlags : QuantizeFlags {
  std::string mode = "quant";
  double budget = 0;
  std::string budget_unit;  // default: bits for quant, fp16 for joint and prune
  std::string sampling;     // default: ste, disp for prune
  SearchOptions search;
  int order_windows = 32;
  std::string checkpoint;
  bool resume = false;
  std::string select = "order";
};

int64_t channels_of(const std::vector<MaskGroup>& groups) {
  int64_t n = 0;
  for (const auto& g : groups) n += g.channels;
  return n;
}

nlohmann::json search_report(const SearchFlags& f, const std::vector<MaskGroup>& groups, const SupernetQuantizers& q,
                             const std::vector<torch::Tensor>& masks, const nlohmann::json& salient_sets,
                             const SearchResult& r) {
  const double realized = compressed_fraction(groups, masks, q).item<double>();
  const double kept = kept_fraction(groups, masks).item<double>();
  nlohmann::json layers = nlohmann::json::array();
  for (size_t i = 0; i < groups.size(); ++i) {
    const auto& g = groups[i];
    nlohmann::json e = {{"layer", g.layer}, {"kind", g.kind}, {"sites", g.sites}, {"channels", g.channels},
                        {"weight_rows", g.weight_rows}};
    if (g.prune) {
      std::vector<int64_t> kept_channels;
      for (int64_t j = 0; j < g.channels; ++j)
        if (masks[i][j].item<float>() > 0.5f) kept_channels.push_back(j);
      e["writers"] = g.writers;
      e["kept_count"] = kept_channels.size();
      e["kept"] = kept_channels;
    } else {
      e["salient_count"] = salient_sets[g.sites.front()]["salient"].size();
      e["salient"] = salient_sets[g.sites.front()]["salient"];
    }
    layers.push_back(e);
  }
  nlohmann::json curve = nlohmann::json::array();
  for (const auto& s : r.curve)
    curve.push_back({{"step", s.step}, {"ce", s.ce}, {"budget", s.budget}, {"kept", s.kept},
                     {"budget_term", s.budget_term}, {"tokens_per_second", s.tokens_per_second}, {"seconds", s.seconds},
                     {"model_seconds", s.model_seconds}, {"wait_seconds", s.wait_seconds}, {"allreduce_seconds", s.allreduce_seconds}});
  return {{"toga_search", 2},
          {"mode", f.mode},
          {"model", f.model},
          {"budget", {{"unit", f.budget_unit},
                      {"target", f.budget},
                      {"target_fp16_fraction", f.search.budget},
                      {"realized_fp16_fraction", realized},
                      {"realized_bits", kept > 0 ? 16 * realized / kept : 0.0},
                      {"kept_fraction", kept},
                      {"sparsity", 1 - kept},
                      {"fp16_linear_bytes", 2 * linear_weights(site_masks(groups))},
                      {"start", {{"salient_fraction", r.start.salient_fraction}, {"keep_fraction", r.start.keep_fraction}}}}},
          {"quantizers", {{"weight_low", quant_spec_to_json(q.weight_low)},
                          {"weight_high", quant_spec_to_json(q.weight_high)},
                          {"act_low", quant_spec_to_json(q.act_low)},
                          {"act_high", quant_spec_to_json(q.act_high)}}},
          {"options", f.search.to_json()},
          {"selection", f.select},
          {"seconds", r.seconds},
          {"resumed_from", r.resumed_from},
          {"processes", f.dist.world_size},
          {"allreduce_bytes_per_step", f.dist.world_size > 1 ? 8 * (channels_of(groups) + 1) : 0},
          {"curve", curve},
          {"layers", layers},
          {"run", run_info(f.common)}};
}

}  // namespace

void register_search(CLI::App& app) {
  auto* cmd = app.add_subcommand("search", "TOGA: learn per-layer precision (and pruning) masks by training a hypernetwork");
  auto f = std::make_shared<SearchFlags>();
  f->method = "atom";
  f->search.progress = true;
  cmd->add_option("model", f->model, "model to compress: HF directory, .gguf, llama2.c .bin")->required();
  cmd->add_option("output", f->output, "output directory (checkpoint with search.json)")->required();
  cmd->add_option("--mode", f->mode, "quant (TOGA-q: salient channels) | joint (TOGA: pruning + precision) | prune (DISP-LLM)")
      ->capture_default_str();
  cmd->add_option("--budget", f->budget, "target: average weight bits (--budget-unit bits) or size relative to FP16 (fp16)")->required();
  cmd->add_option("--budget-unit", f->budget_unit, "bits | fp16 (default: bits for quant, fp16 for joint and prune)");
  cmd->add_option("--fixed-sparsity", f->search.fixed_sparsity, "joint: also pin the pruned fraction of the block linears (TOGA-fixed-sparsity)");
  add_quantizer_flags(cmd, *f);
  cmd->add_option("--steps", f->search.steps, "training steps")->capture_default_str();
  cmd->add_option("--batch", f->search.batch, "windows per step")->capture_default_str();
  cmd->add_option("--seqlen", f->search.seqlen, "tokens per training window")->capture_default_str();
  auto* lambda = cmd->add_option("--lambda", f->search.lambda, "weight of the budget term (prune: 16)")->capture_default_str();
  auto* tau = cmd->add_option("--tau", f->search.tau, "Gumbel-Sigmoid temperature (prune: 0.4)")->capture_default_str();
  cmd->add_option("--sampling", f->sampling,
                  "ste (hard straight-through masks everywhere) | disp (soft masks in the forward, a hard draw for the budget) | "
                  "hybrid (soft pruning masks, straight-through precision masks); default: ste for quant, disp for joint and prune");
  cmd->add_option("--lr", f->search.lr, "AdamW learning rate of the hypernetwork")->capture_default_str();
  cmd->add_option("--init-logit", f->search.init_logit, "prior logit magnitude (the search starts at the budget)")->capture_default_str();
  cmd->add_option("--order-windows", f->order_windows, "windows (of --seqlen) for the mean-|x| channel order")->capture_default_str();
  cmd->add_option("--select", f->select,
                  "final salient channels: order (learned count per layer, channels of largest mean |x|) | learned (the logits' own choice)")
      ->capture_default_str();
  cmd->add_option("--micro-batch", f->search.micro_batch,
                  "windows per forward on each process (default: its whole share of --batch); the same --batch over N "
                  "processes or with --micro-batch batch/N gives the same masks");
  add_distributed_options(cmd, f->dist, "search");
  cmd->add_option("--checkpoint", f->checkpoint, "search checkpoint file (default: OUTPUT.search.pt)");
  cmd->add_option("--checkpoint-every", f->search.checkpoint_every, "steps between checkpoints")->capture_default_str();
  cmd->add_flag("--resume", f->resume, "continue from the checkpoint (same options): the result is the uninterrupted run's");
  cmd->add_option("--save-dtype", f->save_dtype, "dtype of the unquantized tensors: fp32, bf16, fp16")->capture_default_str();
  cmd->add_flag("--force", f->force, "replace an earlier toga output at the output path");
  add_common_options(cmd, f->common);
  cmd->callback([f, cmd, lambda, tau] {
    apply_common_options(f->common);
    if (f->select != "order" && f->select != "learned") fail("--select must be order or learned, got '{}'", f->select);
    if (f->mode != "quant" && f->mode != "joint" && f->mode != "prune")
      fail("--mode must be quant, joint or prune, got '{}'", f->mode);
    const bool quant = f->mode != "prune", prune = f->mode != "quant";
    if (f->search.fixed_sparsity >= 0 && f->mode != "joint") fail("--fixed-sparsity is for --mode joint");
    if (f->budget_unit.empty()) f->budget_unit = f->mode == "quant" ? "bits" : "fp16";
    // TOGA-q's measured default is ste; with pruning masks, soft masks in the forward (docs/SEARCH.md).
    if (f->sampling.empty()) f->sampling = f->mode == "quant" ? "ste" : "disp";
    if (f->sampling != "ste" && f->sampling != "disp" && f->sampling != "hybrid")
      fail("--sampling must be ste, disp or hybrid, got '{}'", f->sampling);
    f->search.sampling = f->sampling;
    if (f->mode == "prune") {  // DISP-LLM's recipe (../shared/docs/RECIPES.md) unless told otherwise
      if (lambda->count() == 0) f->search.lambda = 16.0;
      if (tau->count() == 0) f->search.tau = 0.4;
    }
    const DType save = parse_storage_dtype(f->save_dtype, "--save-dtype");
    const QuantizeOptions opts = options_from_flags(*f, *cmd);
    SupernetQuantizers q{opts.weight_low, opts.weight_high, opts.act_low, opts.act_high};
    if (f->budget_unit == "bits") f->search.budget = f->budget / 16.0;
    else if (f->budget_unit == "fp16") f->search.budget = f->budget;
    else fail("--budget-unit must be bits or fp16, got '{}'", f->budget_unit);
    if (f->mode == "quant") fraction_for_bits(16 * f->search.budget, q);  // an impossible budget fails before any work
    if (!(f->search.budget > 0 && f->search.budget <= 1)) fail("impossible budget: {} of the FP16 size", f->search.budget);
    const std::string ckpt = f->checkpoint.empty() ? f->output + ".search.pt" : f->checkpoint;
    f->dist.validate();
    // Rank 0 alone reads and writes files; the others only compute.
    const bool root = f->dist.rank == 0;
    if (root && !f->resume && std::filesystem::exists(ckpt) && !f->force)
      fail_file(ckpt, "a search checkpoint is already there: --resume to continue it, --force to start over");
    // A new search writes the checkpoint file: the same rule as every other output (a resumed one reads it).
    if (root)
      check_output_paths(f->force, {f->output}, f->resume ? std::vector<std::string>{} : std::vector<std::string>{ckpt});
    // Join the other processes before the long work, so that one failing early stops them all.
    f->dist.device = parse_device(f->common.device, f->dist.rank);
    f->common.device = f->dist.device.str();  // the model loads where the rank communicates
    Collective comm(f->dist);
    f->search.checkpoint_path = ckpt;
    f->search.resume = f->resume;
    f->search.seed = f->seed;

    auto lm = load_model_and_tokenizer(f->model, f->common);
    std::vector<MaskGroup> groups;
    if (quant) groups = quant_mask_groups(lm.model);
    if (prune) for (auto& g : prune_mask_groups(lm.model)) groups.push_back(std::move(g));
    check_budget(f->search.budget, groups, q);
    const auto text = load_eval_text(f->calib_data);
    const auto tokens = tokenize_for_eval(*lm.tokenizer, text.text);
    f->search.seqlen = std::min(f->search.seqlen, lm.model.config.max_position_embeddings);
    // Rank 0's channel orders everywhere: a near-tie sorted otherwise on another CPU would give
    // that rank other masks.
    if (root)
      compute_channel_orders(lm.model, groups,
                             sample_calibration_windows(tokens, f->order_windows, f->search.seqlen, f->seed + 1));
    if (comm.distributed()) {
      std::vector<torch::Tensor> orders;
      for (const auto& g : groups) orders.push_back(root ? g.order.to(torch::kLong) : torch::empty({g.channels}, torch::kLong));
      torch::Tensor all = torch::cat(orders);
      comm.broadcast(all, "the channel orders' broadcast from rank 0", 0, 24 * 3600.0);
      int64_t offset = 0;
      for (auto& g : groups) {
        g.order = all.narrow(0, offset, g.channels).clone();
        offset += g.channels;
      }
    }
    const StartingPoint start = starting_point(groups, q, f->search.budget, f->search.fixed_sparsity);
    if (root)
      std::fprintf(stderr,
                 "search (%s): %zu mask groups, target %.4f of FP16 (starting at %.4f salient, %.4f kept per mask), "
                 "%d steps of %d x %d tokens from %s%s\n",
                 f->mode.c_str(), groups.size(), f->search.budget, start.salient_fraction, start.keep_fraction,
                 f->search.steps, f->search.batch, f->search.seqlen, text.path.c_str(),
                 comm.distributed() ? fmt::format(", {} processes", comm.world_size()).c_str() : "");
    Supernet net(lm.model, groups, q);
    const SearchResult r = train_search(lm.model, net, tokens, f->search, comm);
    if (!root) return;  // rank 0 finalizes (budget, GPTQ, outputs)
    const auto masks = meet_budget(f->select == "order" ? logits_in_channel_order(r.logits, groups) : r.logits, groups, q,
                                   f->search.budget);
    const nlohmann::json salient_sets = salient_sets_json(masks, groups);
    nlohmann::json report_json = search_report(*f, groups, q, masks, salient_sets, r);
    const auto pruning = block_pruning_from_masks(masks, groups);

    // The final model from the unmodified one in fp32: prune, then (GPTQ) quantize what is left.
    CommonOptions fp = f->common;
    fp.dtype = "fp32";
    auto base = load_model_and_tokenizer(f->model, fp);
    auto files = hf_tokenizer_files(*lm.tokenizer);
    const double fp16_bytes = report_json["budget"]["fp16_linear_bytes"].get<double>();
    const double realized = report_json["budget"]["realized_fp16_fraction"].get<double>();
    if (!quant) {
      for (const auto& [layer, keep] : pruning) prune_block(base.model, layer, keep);
      files["search.json"] = report_json.dump(1);
      HFWriteOptions wo;
      wo.extra_files = files;
      wo.output = {"search", f->force ? OnExisting::kReplace : OnExisting::kRefuse};
      save_model(f->output, base.model, save, wo);
      std::printf("| target | realized (kept fraction) | steps | final CE | search time |\n|---|---|---|---|---|\n"
                  "| %.4f | %.4f | %zu | %.4f | %.0fs |\n",
                  f->search.budget, realized, r.curve.size(), r.curve.empty() ? 0.0 : r.curve.back().ce, r.seconds);
      return;
    }
    Plan plan = plan_from_masks(base.model, salient_sets, opts, "search");
    plan.blocks = pruning;
    plan.recipe = f->mode == "joint" ? "toga" : "toga-q";
    plan.provenance = {{"search", f->search.to_json()}, {"realized_fp16_fraction", realized}};
    const int calib_seqlen = std::min(f->calib_seqlen, base.model.config.max_position_embeddings);
    const auto calib = sample_calibration_windows(tokens, f->calib, calib_seqlen, f->seed);
    const auto report = apply_plan(base.model, plan, calib, "search");
    QuantizedCheckpointExtras extras;
    extras.base_model = {{"path", f->model},
                         {"calibration", {{"data", f->calib_data}, {"windows", f->calib}, {"seqlen", calib_seqlen}, {"seed", f->seed}}}};
    extras.files = files;
    extras.files["search.json"] = report_json.dump(1);
    // What `toga quantize --salient-masks` reads: the same sets with other quantizer settings.
    extras.files["salient_masks.json"] = salient_sets.dump();
    extras.on_existing = f->force ? OnExisting::kReplace : OnExisting::kRefuse;
    const LinearStorage stored = save_quantized_checkpoint(f->output, base.model, report, save, extras);
    std::printf("| target | realized (codes) | on disk: codes | + scales | + indices | kept | steps | final CE | search time | GPTQ time |\n"
                "|---|---|---|---|---|---|---|---|---|---|\n"
                "| %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %zu | %.4f | %.0fs | %.0fs |\n",
                f->search.budget, realized, double(stored.codes) / fp16_bytes, double(stored.codes + stored.params) / fp16_bytes,
                double(stored.codes + stored.params + stored.indices) / fp16_bytes,
                report_json["budget"]["kept_fraction"].get<double>(), r.curve.size(),
                r.curve.empty() ? 0.0 : r.curve.back().ce, r.seconds, report.seconds);
  });
}

}  // namespace toga::cli
