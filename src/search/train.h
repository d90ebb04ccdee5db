// TOGA-q's search: train the hypernetwork on the frozen supernet's language-modeling loss plus a
// budget term, then turn its logits into salient sets that meet the budget.
//
//   loss = CE + λ·log(max(B, b) / min(B, b)),   B = average weight bits of the sampled masks
//
// Every step's data and Gumbel noise come from generators seeded by (seed, step), so a run resumed
// from a checkpoint is the uninterrupted run.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "search/hypernet.h"
#include "search/supernet.h"

namespace toga {

struct QuantSearchOptions {
  double budget_bits = 4.5;  // target average weight bits over the block linears (codes only)
  double lambda = 5.0;
  double tau = 0.5;
  double lr = 1e-3;
  double weight_decay = 0.05;
  double init_logit = 3.0;
  int steps = 100;
  int batch = 2;      // windows per step
  int seqlen = 512;   // tokens per window
  uint64_t seed = 0;
  int checkpoint_every = 10;    // steps; 0 = never
  std::string checkpoint_path;  // "" = no checkpoints
  bool resume = false;          // continue from checkpoint_path if it exists
  bool progress = true;

  nlohmann::json to_json() const;
};

struct SearchStep {
  int step = 0;
  double ce = 0, bits = 0, budget_term = 0, tokens_per_second = 0;
};

struct QuantSearchResult {
  std::vector<torch::Tensor> logits;  // per mask group, order space, float32
  std::vector<SearchStep> curve;
  int resumed_from = 0;  // the step a resumed run started at (0 = fresh)
  double seconds = 0;
};

// The realized fraction at which the fixed-fraction recipe meets `bits`: (bits − low) / (high − low).
double fraction_for_bits(double bits, const SupernetQuantizers& q);

// Trains on windows drawn from `tokens` (WikiText-2 validation: never the test split).
QuantSearchResult train_quant_search(const Model& model, Supernet& net, const std::vector<int>& tokens,
                                     const QuantSearchOptions& opts);

// Hard masks from logits (salient where logit > 0), then adjusted to the budget: salient channels with
// the lowest logits are dropped while the average weight bits exceed `budget_bits`, and the
// non-salient ones with the highest logits added while they fit, so budget − (one channel) <
// realized ≤ budget. Order space, {0, 1} float.
std::vector<torch::Tensor> budget_masks(const std::vector<torch::Tensor>& logits, const std::vector<MaskGroup>& groups,
                                        const SupernetQuantizers& q, double budget_bits);

// The learned per-group counts with Atom's choice of channels: each group's logits sorted ascending,
// so the largest go to the channels of largest mean |x| (the end of the order). budget_masks on these
// keeps what the search learned about how many channels each layer needs and takes which ones from
// the activation statistics (see docs/SEARCH.md for why that is the default).
std::vector<torch::Tensor> logits_in_channel_order(const std::vector<torch::Tensor>& logits);

// {site: {"salient": [source channels]}} for every site of every group: what plan_from_masks reads.
nlohmann::json salient_sets_json(const std::vector<torch::Tensor>& masks, const std::vector<MaskGroup>& groups);

}  // namespace toga
