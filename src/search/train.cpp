#include "search/train.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <tuple>

#include <fmt/format.h>

#include "quant/calibration.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/progress.h"

namespace toga {

using torch::Tensor;

nlohmann::json SearchOptions::to_json() const {
  nlohmann::json j = {{"budget", budget}, {"lambda", lambda}, {"tau", tau}, {"sampling", sampling}, {"lr", lr},
                      {"weight_decay", weight_decay}, {"init_logit", init_logit}, {"steps", steps},
                      {"batch", batch}, {"seqlen", seqlen}, {"seed", seed}};
  if (fixed_sparsity >= 0) j["fixed_sparsity"] = fixed_sparsity;
  if (start_salient >= 0) j["start_salient"] = start_salient;
  if (start_keep >= 0) j["start_keep"] = start_keep;
  return j;
}

double fraction_for_bits(double bits, const SupernetQuantizers& q) {
  const double lb = q.weight_low.bits, hb = q.weight_high.bits;
  if (!(hb > lb)) fail("high-precision bits ({}) must exceed the low bits ({})", hb, lb);
  if (!(bits >= lb && bits <= hb))
    fail("impossible budget: {:.4g} average weight bits is outside [{}, {}] (all channels at {} to all at {} bits)", bits,
         lb, hb, lb, hb);
  return (bits - lb) / (hb - lb);
}

StartingPoint starting_point(const std::vector<MaskGroup>& groups, const SupernetQuantizers& q, double budget,
                             double fixed_sparsity) {
  check_budget(budget, groups, q);
  bool precision = false, pruning = false;
  for (const auto& g : groups) (g.prune ? pruning : precision) = true;
  if (fixed_sparsity >= 0 && !(pruning && fixed_sparsity < 1)) fail("a fixed sparsity needs pruning masks and S in [0, 1), got {}", fixed_sparsity);
  StartingPoint p;
  const double lb = q.weight_low.bits, hb = q.weight_high.bits;
  // The largest value in [0, 1] with measure(value) <= target (measure increasing), by bisection.
  auto bisect = [](auto measure, double target) {
    double lo = 0, hi = 1;
    if (measure(hi) <= target) return hi;
    for (int i = 0; i < 40; ++i) {
      const double mid = 0.5 * (lo + hi);
      (measure(mid) <= target ? lo : hi) = mid;
    }
    return lo;
  };
  auto compressed = [&](double f, double k) { return compressed_fraction(groups, prior_masks(groups, f, k), q).item<double>(); };
  if (!pruning) {
    p.salient_fraction = fraction_for_bits(16 * budget, q);
  } else if (fixed_sparsity >= 0) {
    p.keep_fraction = bisect([&](double k) { return kept_fraction(groups, prior_masks(groups, 0, k)).item<double>(); },
                             1 - fixed_sparsity);
    if (precision) {
      if (compressed(0, p.keep_fraction) > budget * (1 + 1e-9))
        fail("impossible budget: {:.4g} of FP16 at sparsity {:.4g} needs fewer than {} bits per weight", budget, fixed_sparsity, lb);
      p.salient_fraction = bisect([&](double f) { return compressed(f, p.keep_fraction); }, budget);
    }
  } else if (!precision || compressed(0, 1) > budget) {
    p.keep_fraction = bisect([&](double k) { return compressed(0, k); }, budget);
  } else {
    p.salient_fraction = (16 * budget - lb) / (hb - lb);
  }
  return p;
}

namespace {

// Independent streams per (seed, step, purpose): resuming at step s draws what the full run drew.
uint64_t stream_seed(uint64_t seed, int step, uint64_t purpose) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + uint64_t(step) * 0xBF58476D1CE4E5B9ull + purpose * 0x94D049BB133111EBull;
  x ^= x >> 31;
  return x;
}

// What must match for a checkpoint to continue this run (steps may grow).
std::string run_identity(const SearchOptions& o, const std::vector<MaskGroup>& groups) {
  nlohmann::json j = o.to_json();
  j.erase("steps");
  int64_t channels = 0, pruning = 0;
  for (const auto& g : groups) {
    channels += g.channels;
    pruning += g.prune;
  }
  j["mask_groups"] = groups.size();
  j["pruning_groups"] = pruning;
  j["channels"] = channels;
  return j.dump();
}

void save_search_checkpoint(const std::string& path, Hypernet& net, torch::optim::AdamW& opt, int step,
                            const std::vector<SearchStep>& curve, const std::string& identity) {
  torch::serialize::OutputArchive archive, net_archive, opt_archive;
  net->save(net_archive);
  opt.save(opt_archive);
  archive.write("hypernet", net_archive);
  archive.write("optimizer", opt_archive);
  archive.write("step", torch::tensor(int64_t(step)));
  archive.write("identity", c10::IValue(identity));
  Tensor c = torch::zeros({int64_t(curve.size()), 6}, torch::kFloat64);
  for (size_t i = 0; i < curve.size(); ++i) {
    const auto& s = curve[i];
    c[int64_t(i)] = torch::tensor({double(s.step), s.ce, s.budget, s.kept, s.budget_term, s.tokens_per_second}, torch::kFloat64);
  }
  archive.write("curve", c);
  write_file_atomically(path, [&](const std::string& tmp) { archive.save_to(tmp); });
}

int load_search_checkpoint(const std::string& path, Hypernet& net, torch::optim::AdamW& opt,
                           std::vector<SearchStep>& curve, const std::string& identity) {
  torch::serialize::InputArchive archive, net_archive, opt_archive;
  try {
    archive.load_from(path);
  } catch (const c10::Error& e) {
    fail_file(path, "not a toga search checkpoint (or truncated): {}", e.what_without_backtrace());
  }
  c10::IValue id;
  archive.read("identity", id);
  if (id.toStringRef() != identity)
    fail_file(path, "the checkpoint was made with other search options or another model: {} (this run: {})",
              id.toStringRef(), identity);
  archive.read("hypernet", net_archive);
  archive.read("optimizer", opt_archive);
  net->load(net_archive);
  opt.load(opt_archive);
  Tensor step, c;
  archive.read("step", step);
  archive.read("curve", c);
  curve.clear();
  for (int64_t i = 0; i < c.size(0); ++i) {
    const auto r = c[i];
    curve.push_back({int(r[0].item<double>()), r[1].item<double>(), r[2].item<double>(), r[3].item<double>(),
                     r[4].item<double>(), r[5].item<double>()});
  }
  return int(step.item<int64_t>());
}

}  // namespace

SearchResult train_search(const Model& model, Supernet& net, const std::vector<int>& tokens, const SearchOptions& o) {
  const auto& groups = net.groups();
  const SupernetQuantizers& q = net.quantizers();
  if (o.steps < 0 || o.batch < 1 || o.seqlen < 2) fail("search needs steps >= 0, batch >= 1, seqlen >= 2");
  if (o.sampling != "ste" && o.sampling != "disp" && o.sampling != "hybrid")
    fail("mask sampling must be ste, disp or hybrid, got '{}'", o.sampling);
  SearchResult result;
  result.start = starting_point(groups, q, o.budget, o.fixed_sparsity);
  if (o.start_salient >= 0) result.start.salient_fraction = o.start_salient;
  if (o.start_keep >= 0) result.start.keep_fraction = o.start_keep;
  if (result.start.salient_fraction > 1 || result.start.keep_fraction > 1) fail("starting fractions must be in [0, 1]");
  bool pruning = false;
  for (const auto& g : groups) pruning = pruning || g.prune;
  Hypernet hyper(groups, prior_masks(groups, result.start.salient_fraction, result.start.keep_fraction), o.init_logit, 64,
                 128, o.seed);
  torch::optim::AdamW opt(hyper->parameters(), torch::optim::AdamWOptions(o.lr).weight_decay(o.weight_decay));
  const std::string identity = run_identity(o, groups);
  int start = 0;
  if (o.resume && !o.checkpoint_path.empty() && std::filesystem::exists(o.checkpoint_path)) {
    start = load_search_checkpoint(o.checkpoint_path, hyper, opt, result.curve, identity);
    result.resumed_from = start;
    if (o.progress) std::fprintf(stderr, "resumed from %s at step %d\n", o.checkpoint_path.c_str(), start);
  }
  Progress progress("search", o.steps, o.progress);
  const auto t0 = std::chrono::steady_clock::now();
  for (int step = start; step < o.steps; ++step) {
    const auto ts = std::chrono::steady_clock::now();
    const Tensor ids = sample_calibration_windows(tokens, o.batch, o.seqlen, stream_seed(o.seed, step, 1)).to(model.device());
    const auto logits = hyper->forward();
    // One Gumbel draw, soft or straight-through per group; with soft masks in the forward the budget
    // sees an independent hard draw (DISP-LLM).
    auto masks = sample_masks(logits, {o.tau, true, false, stream_seed(o.seed, step, 2)});
    for (size_t i = 0; i < masks.size(); ++i)
      if (o.sampling == "ste" || (o.sampling == "hybrid" && !groups[i].prune))
        masks[i] = straight_through_hard(masks[i]);
    const auto budget_masks = o.sampling == "ste" ? masks : sample_masks(logits, {o.tau, true, true, stream_seed(o.seed, step, 3)});
    net.set_masks(masks);
    const int64_t T = ids.size(1);
    const Tensor out = model.forward(ids).narrow(1, 0, T - 1).to(torch::kFloat32);
    const Tensor ce = torch::nn::functional::cross_entropy(out.reshape({-1, out.size(-1)}), ids.narrow(1, 1, T - 1).reshape({-1}));
    const Tensor budget = compressed_fraction(groups, budget_masks, q);
    Tensor budget_term = o.lambda * torch::abs(torch::log(budget / o.budget));
    const Tensor kept = pruning ? kept_fraction(groups, budget_masks) : torch::ones({}, torch::kFloat64);
    if (o.fixed_sparsity >= 0) budget_term = budget_term + o.lambda * torch::abs(torch::log(kept / (1 - o.fixed_sparsity)));
    const Tensor loss = ce + budget_term.to(torch::kFloat32);
    opt.zero_grad();
    loss.backward();
    opt.step();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
    SearchStep s{step + 1, ce.item<double>(), budget.item<double>(), kept.item<double>(), budget_term.item<double>(),
                 double(ids.numel()) / std::max(secs, 1e-9)};
    result.curve.push_back(s);
    progress.update(step + 1, fmt::format("CE {:.4f} | budget {:.4f} (target {:.4f}){} | λ-term {:.4f} | {:.0f} tok/s", s.ce,
                                          s.budget, o.budget, pruning ? fmt::format(" | kept {:.3f}", s.kept) : "",
                                          s.budget_term, s.tokens_per_second));
    if (!o.checkpoint_path.empty() && ((o.checkpoint_every > 0 && (step + 1) % o.checkpoint_every == 0) || step + 1 == o.steps))
      save_search_checkpoint(o.checkpoint_path, hyper, opt, step + 1, result.curve, identity);
  }
  progress.finish();
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  torch::NoGradGuard no_grad;
  for (const Tensor& l : hyper->forward()) result.logits.push_back(l.detach().clone());
  return result;
}

std::vector<Tensor> logits_in_channel_order(const std::vector<Tensor>& logits, const std::vector<MaskGroup>& groups) {
  if (logits.size() != groups.size()) fail("{} logit vectors for {} mask groups", logits.size(), groups.size());
  std::vector<Tensor> out;
  for (size_t i = 0; i < logits.size(); ++i)
    out.push_back(groups[i].prune ? logits[i].detach() : std::get<0>(logits[i].detach().sort()));
  return out;
}

}  // namespace toga
