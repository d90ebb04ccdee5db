#include "search/train.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <sstream>
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
  if (micro_batch > 0) j["micro_batch"] = micro_batch;
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

// What must match for a checkpoint to continue this run: steps may grow, and the micro-batch and
// the number of processes may change (they move only the rounding of the gradient's sum).
std::string run_identity(const SearchOptions& o, const std::vector<MaskGroup>& groups) {
  nlohmann::json j = o.to_json();
  j.erase("steps");
  j.erase("micro_batch");
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

constexpr int kCurveColumns = 10;

std::string checkpoint_bytes(Hypernet& net, torch::optim::AdamW& opt, int step, const std::vector<SearchStep>& curve,
                             const std::string& identity) {
  torch::serialize::OutputArchive archive, net_archive, opt_archive;
  net->save(net_archive);
  opt.save(opt_archive);
  archive.write("hypernet", net_archive);
  archive.write("optimizer", opt_archive);
  archive.write("step", torch::tensor(int64_t(step)));
  archive.write("identity", c10::IValue(identity));
  Tensor c = torch::zeros({int64_t(curve.size()), kCurveColumns}, torch::kFloat64);
  for (size_t i = 0; i < curve.size(); ++i) {
    const auto& s = curve[i];
    c[int64_t(i)] = torch::tensor({double(s.step), s.ce, s.budget, s.kept, s.budget_term, s.tokens_per_second, s.seconds,
                                   s.model_seconds, s.wait_seconds, s.allreduce_seconds},
                                  torch::kFloat64);
  }
  archive.write("curve", c);
  std::ostringstream out;
  archive.save_to(out);
  return out.str();
}

// `source` names the bytes in errors (the checkpoint file).
int load_checkpoint_bytes(const std::string& bytes, const std::string& source, Hypernet& net, torch::optim::AdamW& opt,
                          std::vector<SearchStep>& curve, const std::string& identity) {
  torch::serialize::InputArchive archive, net_archive, opt_archive;
  try {
    archive.load_from(bytes.data(), bytes.size());
  } catch (const c10::Error& e) {
    fail_file(source, "not a toga search checkpoint (or truncated): {}", e.what_without_backtrace());
  }
  c10::IValue id;
  archive.read("identity", id);
  if (id.toStringRef() != identity)
    fail_file(source, "the checkpoint was made with other search options or another model: {} (this run: {})",
              id.toStringRef(), identity);
  archive.read("hypernet", net_archive);
  archive.read("optimizer", opt_archive);
  net->load(net_archive);
  opt.load(opt_archive);
  Tensor step, c;
  archive.read("step", step);
  archive.read("curve", c);
  curve.clear();
  for (int64_t i = 0; i < c.size(0); ++i) {  // checkpoints before the timing columns have 6
    const auto r = c[i];
    auto col = [&](int64_t j) { return j < c.size(1) ? r[j].item<double>() : 0.0; };
    curve.push_back({int(col(0)), col(1), col(2), col(3), col(4), col(5), col(6), col(7), col(8), col(9)});
  }
  return int(step.item<int64_t>());
}

// A sequential float64 sum over the hypernetwork's weights: the same bits on every rank exactly when
// the weights are (one ULP anywhere moves it), whatever each rank's thread count.
double weights_fingerprint(Hypernet& net) {
  double sum = 0, weighted = 0;
  int64_t k = 0;
  for (const Tensor& p : net->parameters()) {
    const Tensor c = p.detach().to(torch::kCPU, torch::kFloat32).contiguous();
    const float* v = c.data_ptr<float>();
    for (int64_t i = 0; i < c.numel(); ++i, ++k) {
      sum += v[i];
      weighted += v[i] * double((k % 1021) + 1);
    }
  }
  return sum + 1e-3 * weighted;
}

// Every rank continues from rank 0's hypernetwork and optimizer. They hold the same bits when the
// ranks' CPUs compute alike (then this only checks); on mixed CPUs AdamW's elementwise arithmetic may
// differ in the last bit, and the ranks would drift apart: they are re-synchronized here, at the start
// and at every checkpoint.
void synchronize_ranks(Collective& comm, Hypernet& net, torch::optim::AdamW& opt, int step, std::vector<SearchStep>& curve,
                       const std::string& identity) {
  if (!comm.distributed()) return;
  const std::string what = fmt::format("the ranks' check of the hypernetwork at step {}", step);
  const double mine = weights_fingerprint(net);
  Tensor root = torch::tensor({mine}, torch::kFloat64);
  comm.broadcast(root, what);
  Tensor differ = torch::tensor({mine == root.item<double>() ? 0.0 : 1.0}, torch::kFloat64);
  comm.allreduce_sum(differ, what);
  if (differ.item<double>() == 0) return;
  const std::string state = comm.broadcast_bytes(comm.is_root() ? checkpoint_bytes(net, opt, step, curve, identity) : "", what);
  if (!comm.is_root()) load_checkpoint_bytes(state, "rank 0's hypernetwork", net, opt, curve, identity);
  if (comm.is_root())
    std::fprintf(stderr, "warning: %d rank(s) computed other hypernetwork weights than rank 0 by step %d (CPUs that round "
                         "differently?): re-synchronized from rank 0\n", int(differ.item<double>()), step);
}

// Every rank must run the same search on the same data: rank 0's options, model and tokens are
// compared with each rank's, and all ranks stop if one differs.
std::string ranks_identity(const std::string& identity, const std::vector<int>& tokens) {
  return identity + fmt::format(" tokens={}:{}", tokens.size(), fingerprint(tokens.data(), tokens.size() * sizeof(int)));
}

}  // namespace

SearchResult train_search(const Model& model, Supernet& net, const std::vector<int>& tokens, const SearchOptions& o) {
  Collective single;
  return train_search(model, net, tokens, o, single);
}

SearchResult train_search(const Model& model, Supernet& net, const std::vector<int>& tokens, const SearchOptions& o,
                          Collective& comm) {
  const auto& groups = net.groups();
  const SupernetQuantizers& q = net.quantizers();
  if (o.steps < 0 || o.batch < 1 || o.seqlen < 2 || o.micro_batch < 0)
    fail("search needs steps >= 0, batch >= 1, seqlen >= 2, micro-batch >= 0");
  if (o.sampling != "ste" && o.sampling != "disp" && o.sampling != "hybrid")
    fail("mask sampling must be ste, disp or hybrid, got '{}'", o.sampling);
  const int world = comm.world_size();
  if (o.batch < world)
    fail("a batch of {} windows cannot be shared by {} processes: --batch must be at least the number of processes",
         o.batch, world);
  // This rank's windows of each step's batch, run `micro` at a time.
  const int first = int(int64_t(comm.rank()) * o.batch / world), last = int(int64_t(comm.rank() + 1) * o.batch / world);
  const int micro = o.micro_batch > 0 ? o.micro_batch : last - first;
  SearchResult result;
  result.start = starting_point(groups, q, o.budget, o.fixed_sparsity);
  if (o.start_salient >= 0) result.start.salient_fraction = o.start_salient;
  if (o.start_keep >= 0) result.start.keep_fraction = o.start_keep;
  if (result.start.salient_fraction > 1 || result.start.keep_fraction > 1) fail("starting fractions must be in [0, 1]");
  bool pruning = false;
  int64_t channels = 0;
  for (const auto& g : groups) {
    pruning = pruning || g.prune;
    channels += g.channels;
  }
  Hypernet hyper(groups, prior_masks(groups, result.start.salient_fraction, result.start.keep_fraction), o.init_logit, 64,
                 128, o.seed);
  torch::optim::AdamW opt(hyper->parameters(), torch::optim::AdamWOptions(o.lr).weight_decay(o.weight_decay));
  const std::string identity = run_identity(o, groups);
  comm.require_same_as_root(ranks_identity(identity, tokens), "search");
  int start = 0;
  if (o.resume && !o.checkpoint_path.empty()) {
    // Rank 0 reads the checkpoint and hands it to every rank: only its machine needs the file.
    std::string bytes;
    if (comm.is_root() && std::filesystem::exists(o.checkpoint_path)) bytes = read_text_file(o.checkpoint_path);
    bytes = comm.broadcast_bytes(bytes, "the checkpoint's broadcast from rank 0");
    if (!bytes.empty()) {
      start = load_checkpoint_bytes(bytes, o.checkpoint_path, hyper, opt, result.curve, identity);
      result.resumed_from = start;
      if (o.progress && comm.is_root()) std::fprintf(stderr, "resumed from %s at step %d\n", o.checkpoint_path.c_str(), start);
    }
  }
  synchronize_ranks(comm, hyper, opt, start, result.curve, identity);
  Progress progress("search", o.steps, o.progress && comm.is_root());
  const auto t0 = std::chrono::steady_clock::now();
  for (int step = start; step < o.steps; ++step) {
    const auto ts = std::chrono::steady_clock::now();
    const Tensor ids = sample_calibration_windows(tokens, o.batch, o.seqlen, stream_seed(o.seed, step, 1));
    const auto logits = hyper->forward();
    // One Gumbel draw, soft or straight-through per group; with soft masks in the forward the budget
    // sees an independent hard draw (DISP-LLM).
    auto masks = sample_masks(logits, {o.tau, true, false, stream_seed(o.seed, step, 2)});
    for (size_t i = 0; i < masks.size(); ++i)
      if (o.sampling == "ste" || (o.sampling == "hybrid" && !groups[i].prune))
        masks[i] = straight_through_hard(masks[i]);
    const auto budget_masks = o.sampling == "ste" ? masks : sample_masks(logits, {o.tau, true, true, stream_seed(o.seed, step, 3)});
    // The model's backward stops at the masks: d CE / d mask, summed in float64 over this rank's
    // micro-batches, then over the ranks; the last entry carries the CE.
    std::vector<Tensor> leaves;
    for (const Tensor& m : masks) leaves.push_back(m.detach().requires_grad_(true));
    Tensor mask_grad = torch::zeros({channels + 1}, torch::kFloat64);
    const auto tm = std::chrono::steady_clock::now();
    for (int a = first; a < last; a += micro) {
      const int n = std::min(micro, last - a);
      net.set_masks(leaves);
      const Tensor window = ids.narrow(0, a, n).to(model.device());
      const int64_t T = window.size(1);
      const Tensor out = model.forward(window).narrow(1, 0, T - 1).to(torch::kFloat32);
      const Tensor ce = torch::nn::functional::cross_entropy(out.reshape({-1, out.size(-1)}),
                                                             window.narrow(1, 1, T - 1).reshape({-1}));
      const double weight = double(n) / o.batch;  // a batch's CE is the mean over its windows
      (ce * weight).backward();
      int64_t offset = 0;
      for (Tensor& leaf : leaves) {
        if (leaf.grad().defined()) {
          mask_grad.narrow(0, offset, leaf.numel()) += leaf.grad().to(torch::kCPU, torch::kFloat64);
          leaf.mutable_grad() = Tensor();
        }
        offset += leaf.numel();
      }
      mask_grad[channels] += ce.item<double>() * weight;
    }
    const double model_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - tm).count();
    // The barrier splits the time a rank waits for the slowest one from the transfer itself.
    const auto tw = std::chrono::steady_clock::now();
    comm.barrier(fmt::format("step {}'s barrier", step + 1));
    const auto tc = std::chrono::steady_clock::now();
    comm.allreduce_sum(mask_grad, fmt::format("step {}'s gradient all-reduce", step + 1));
    const double wait_secs = std::chrono::duration<double>(tc - tw).count();
    const double allreduce_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - tc).count();
    const Tensor budget = compressed_fraction(groups, budget_masks, q);
    Tensor budget_term = o.lambda * torch::abs(torch::log(budget / o.budget));
    const Tensor kept = pruning ? kept_fraction(groups, budget_masks) : torch::ones({}, torch::kFloat64);
    if (o.fixed_sparsity >= 0) budget_term = budget_term + o.lambda * torch::abs(torch::log(kept / (1 - o.fixed_sparsity)));
    // Backward through the sampling and the hypernetwork: the summed CE gradient at the masks plus
    // the budget term's own gradient.
    std::vector<Tensor> roots, grads;
    int64_t offset = 0;
    for (const Tensor& m : masks) {
      roots.push_back(m);
      grads.push_back(mask_grad.narrow(0, offset, m.numel()).to(m.device(), m.scalar_type()));
      offset += m.numel();
    }
    roots.push_back(budget_term);
    grads.push_back(torch::ones_like(budget_term));
    opt.zero_grad();
    torch::autograd::backward(roots, grads);
    opt.step();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
    SearchStep s{step + 1, mask_grad[channels].item<double>(), budget.item<double>(), kept.item<double>(),
                 budget_term.item<double>(), double(ids.numel()) / std::max(secs, 1e-9), secs, model_secs, wait_secs, allreduce_secs};
    result.curve.push_back(s);
    progress.update(step + 1, fmt::format("CE {:.4f} | budget {:.4f} (target {:.4f}){} | λ-term {:.4f} | {:.0f} tok/s{}", s.ce,
                                          s.budget, o.budget, pruning ? fmt::format(" | kept {:.3f}", s.kept) : "",
                                          s.budget_term, s.tokens_per_second,
                                          comm.distributed() ? fmt::format(" | wait {:.3f}s, all-reduce {:.3f}s", wait_secs, allreduce_secs) : ""));
    const bool at_checkpoint = (o.checkpoint_every > 0 && (step + 1) % o.checkpoint_every == 0) || step + 1 == o.steps;
    if (at_checkpoint) {
      synchronize_ranks(comm, hyper, opt, step + 1, result.curve, identity);
      if (comm.is_root() && !o.checkpoint_path.empty()) {
        write_text_atomically(o.checkpoint_path, checkpoint_bytes(hyper, opt, step + 1, result.curve, identity));
      }
    }
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
