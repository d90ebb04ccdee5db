#include "search/quant_search.h"

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

nlohmann::json QuantSearchOptions::to_json() const {
  return {{"budget_bits", budget_bits}, {"lambda", lambda}, {"tau", tau}, {"lr", lr},
          {"weight_decay", weight_decay}, {"init_logit", init_logit}, {"steps", steps},
          {"batch", batch}, {"seqlen", seqlen}, {"seed", seed}};
}

double fraction_for_bits(double bits, const SupernetQuantizers& q) {
  const double lb = q.weight_low.bits, hb = q.weight_high.bits;
  if (!(hb > lb)) fail("high-precision bits ({}) must exceed the low bits ({})", hb, lb);
  if (!(bits >= lb && bits <= hb))
    fail("impossible budget: {:.4g} average weight bits is outside [{}, {}] (all channels at {} to all at {} bits)", bits,
         lb, hb, lb, hb);
  return (bits - lb) / (hb - lb);
}

namespace {

// Independent streams per (seed, step, purpose): resuming at step s draws what the full run drew.
uint64_t stream_seed(uint64_t seed, int step, uint64_t purpose) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + uint64_t(step) * 0xBF58476D1CE4E5B9ull + purpose * 0x94D049BB133111EBull;
  x ^= x >> 31;
  return x;
}

// What must match for a checkpoint to continue this run (steps may grow).
std::string run_identity(const QuantSearchOptions& o, const std::vector<MaskGroup>& groups) {
  nlohmann::json j = o.to_json();
  j.erase("steps");
  int64_t channels = 0;
  for (const auto& g : groups) channels += g.channels;
  j["mask_groups"] = groups.size();
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
  Tensor c = torch::zeros({int64_t(curve.size()), 5}, torch::kFloat64);
  for (size_t i = 0; i < curve.size(); ++i) {
    const auto& s = curve[i];
    c[int64_t(i)] = torch::tensor({double(s.step), s.ce, s.bits, s.budget_term, s.tokens_per_second}, torch::kFloat64);
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
                     r[4].item<double>()});
  }
  return int(step.item<int64_t>());
}

}  // namespace

QuantSearchResult train_quant_search(const Model& model, Supernet& net, const std::vector<int>& tokens,
                                     const QuantSearchOptions& o) {
  const auto& groups = net.groups();
  const SupernetQuantizers& q = net.quantizers();
  const double prior = fraction_for_bits(o.budget_bits, q);
  if (o.steps < 0 || o.batch < 1 || o.seqlen < 2) fail("search needs steps >= 0, batch >= 1, seqlen >= 2");
  Hypernet hyper(groups, prior, o.init_logit, 64, 128, o.seed);
  torch::optim::AdamW opt(hyper->parameters(), torch::optim::AdamWOptions(o.lr).weight_decay(o.weight_decay));
  QuantSearchResult result;
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
    const auto masks = sample_masks(hyper->forward(), {o.tau, true, true, stream_seed(o.seed, step, 2)});
    net.set_masks(masks);
    const int64_t T = ids.size(1);
    const Tensor logits = model.forward(ids).narrow(1, 0, T - 1).to(torch::kFloat32);
    const Tensor ce = torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}),
                                                           ids.narrow(1, 1, T - 1).reshape({-1}));
    const Tensor bits = weight_bits(groups, masks, q);
    const Tensor budget_term = o.lambda * torch::abs(torch::log(bits / o.budget_bits));
    const Tensor loss = ce + budget_term.to(torch::kFloat32);
    opt.zero_grad();
    loss.backward();
    opt.step();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
    SearchStep s{step + 1, ce.item<double>(), bits.item<double>(), budget_term.item<double>(),
                 double(ids.numel()) / std::max(secs, 1e-9)};
    result.curve.push_back(s);
    progress.update(step + 1, fmt::format("CE {:.4f} | bits {:.4f} (target {:.4f}) | λ-term {:.4f} | {:.0f} tok/s", s.ce,
                                          s.bits, o.budget_bits, s.budget_term, s.tokens_per_second));
    if (!o.checkpoint_path.empty() && ((o.checkpoint_every > 0 && (step + 1) % o.checkpoint_every == 0) || step + 1 == o.steps))
      save_search_checkpoint(o.checkpoint_path, hyper, opt, step + 1, result.curve, identity);
  }
  progress.finish();
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  torch::NoGradGuard no_grad;
  for (const Tensor& l : hyper->forward()) result.logits.push_back(l.detach().clone());
  return result;
}

std::vector<Tensor> budget_masks(const std::vector<Tensor>& logits, const std::vector<MaskGroup>& groups,
                                 const SupernetQuantizers& q, double budget_bits) {
  fraction_for_bits(budget_bits, q);  // checks the budget is reachable
  if (logits.size() != groups.size()) fail("{} logit vectors for {} mask groups", logits.size(), groups.size());
  double total = 0;
  for (const auto& g : groups) total += double(g.weight_rows) * double(g.channels);
  const double step_bits = q.weight_high.bits - q.weight_low.bits;
  std::vector<Tensor> masks;
  std::vector<std::tuple<float, size_t, int64_t>> salient, plain;  // (logit, group, channel)
  for (size_t i = 0; i < groups.size(); ++i) {
    const Tensor l = logits[i].detach().to(torch::kFloat32).cpu().contiguous();
    masks.push_back((l > 0).to(torch::kFloat32));
    const float* p = l.data_ptr<float>();
    for (int64_t j = 0; j < l.numel(); ++j) (p[j] > 0 ? salient : plain).emplace_back(p[j], i, j);
  }
  double bits = weight_bits(groups, masks, q).item<double>();
  auto cost = [&](size_t g) { return double(groups[g].weight_rows) * step_bits / total; };
  const double eps = 1e-12;
  std::sort(salient.begin(), salient.end());
  for (const auto& [l, g, j] : salient) {
    if (bits <= budget_bits + eps) break;
    masks[g][j] = 0.0f;
    bits -= cost(g);
  }
  std::sort(plain.begin(), plain.end(), [](const auto& a, const auto& b) { return std::get<0>(a) > std::get<0>(b); });
  for (const auto& [l, g, j] : plain)
    if (bits + cost(g) <= budget_bits + eps) {
      masks[g][j] = 1.0f;
      bits += cost(g);
    }
  return masks;
}

std::vector<Tensor> logits_in_channel_order(const std::vector<Tensor>& logits) {
  std::vector<Tensor> out;
  for (const Tensor& l : logits) out.push_back(std::get<0>(l.detach().sort()));
  return out;
}

nlohmann::json salient_sets_json(const std::vector<Tensor>& masks, const std::vector<MaskGroup>& groups) {
  nlohmann::json out = nlohmann::json::object();
  for (size_t i = 0; i < groups.size(); ++i) {
    const Tensor idx = groups[i].order.cpu().index_select(0, torch::nonzero(masks[i].cpu() > 0.5).flatten());
    std::vector<int64_t> channels(idx.data_ptr<int64_t>(), idx.data_ptr<int64_t>() + idx.numel());
    std::sort(channels.begin(), channels.end());
    for (const auto& site : groups[i].sites) out[site] = {{"salient", channels}};
  }
  return out;
}

}  // namespace toga
