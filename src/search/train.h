// The search: train the hypernetwork on the frozen supernet's language-modeling loss plus a budget
// term, then turn its logits into masks that meet the budget (budget.h). One loop for TOGA-q
// (precision masks), DISP-LLM (pruning masks) and TOGA joint (both):
//
//   loss = CE + λ·log(max(B, b) / min(B, b))  [+ λ·log(max(K, k) / min(K, k)) with a fixed sparsity]
//
// B = compressed fraction of FP16 of the sampled masks, b its target; K the kept fraction, k = 1 − S.
// Every step's data and Gumbel noise come from generators seeded by (seed, step), so a run resumed
// from a checkpoint is the uninterrupted run.
//
// Data parallel (docs/DISTRIBUTED.md): each of N processes runs the step's windows r·b/N .. (r+1)·b/N
// (in micro-batches) and all-reduces the loss gradient with respect to the *masks*, not to the
// hypernetwork's weights: every rank computes the same hypernetwork forward, so its backward is the
// same linear map on every rank and the summed mask gradient gives the summed weight gradient —
// one float64 per channel (~1.7 MB per step for SmolLM2) instead of every weight (~220 MB).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dist/collective.h"
#include "search/budget.h"
#include "search/hypernet.h"
#include "search/supernet.h"

namespace toga {

struct SearchOptions {
  double budget = 4.5 / 16;     // compressed bytes / FP16 bytes of the block linears (bits / 16 for TOGA-q)
  double fixed_sparsity = -1;   // ≥ 0: pin the pruned fraction of block-linear weights (TOGA-fixed-sparsity)
  double lambda = 5.0;
  double tau = 0.5;
  // How sampled masks enter the forward: "ste" hard straight-through masks, also the budget's;
  // "disp" (DISP-LLM's recipe) soft masks, the budget seeing an independent hard draw; "hybrid"
  // soft pruning masks and hard straight-through precision masks, the budget an independent hard
  // draw. docs/SEARCH.md has the measurements behind each mode's default.
  std::string sampling = "ste";
  double lr = 1e-3;
  double weight_decay = 0.05;
  double init_logit = 3.0;
  // Where the masks start (starting_point below when negative): salient fraction per precision
  // group, kept fraction per pruning group.
  double start_salient = -1, start_keep = -1;
  int steps = 100;
  int batch = 2;      // windows per step
  int seqlen = 512;   // tokens per window
  // Windows per forward on each process (0: the process's whole share of `batch`). The loss
  // gradient is summed in float64 over micro-batches and processes, so one process with
  // micro_batch = batch/N gives an N-process run's masks bit for bit.
  int micro_batch = 0;
  uint64_t seed = 0;
  int checkpoint_every = 10;    // steps; 0 = never
  std::string checkpoint_path;  // "" = no checkpoints
  bool resume = false;          // continue from checkpoint_path if it exists
  bool progress = true;

  nlohmann::json to_json() const;
};

// Where the hypernetwork starts (prior_masks' arguments): without pruning groups, Atom's fixed
// fraction at the budget; without precision groups, the uniform keep ratio that meets it; jointly,
// no pruning while the low bits alone fit (else the keep ratio that fits at low bits), or, with a
// fixed sparsity, that sparsity and the salient fraction the rest of the budget pays for.
struct StartingPoint {
  double salient_fraction = 0, keep_fraction = 1;
};
StartingPoint starting_point(const std::vector<MaskGroup>& groups, const SupernetQuantizers& q, double budget,
                             double fixed_sparsity = -1);

struct SearchStep {
  int step = 0;
  double ce = 0, budget = 0, kept = 1, budget_term = 0, tokens_per_second = 0;
  // The step's wall time; of it, the model's forward and backward (the part the ranks share out),
  // waiting at the barrier for the slowest rank, and the all-reduce itself. The rest (hypernetwork,
  // budget, AdamW) every rank repeats.
  double seconds = 0, model_seconds = 0, wait_seconds = 0, allreduce_seconds = 0;
};

struct SearchResult {
  std::vector<torch::Tensor> logits;  // per mask group (precision: order space), float32
  std::vector<SearchStep> curve;
  StartingPoint start;
  int resumed_from = 0;  // the step a resumed run started at (0 = fresh)
  double seconds = 0;
};

// The fixed fraction at which Atom's recipe meets `bits`: (bits − low) / (high − low), or an
// "impossible budget" error.
double fraction_for_bits(double bits, const SupernetQuantizers& q);

// Trains on windows drawn from `tokens` (WikiText-2 validation: never the test split). With a
// distributed `comm`, every rank calls it with the same options, model and tokens (checked), rank 0
// alone reads and writes the checkpoint and prints progress, and every rank returns the same logits.
SearchResult train_search(const Model& model, Supernet& net, const std::vector<int>& tokens, const SearchOptions& opts,
                          Collective& comm);
SearchResult train_search(const Model& model, Supernet& net, const std::vector<int>& tokens, const SearchOptions& opts);

// The learned per-group counts with Atom's choice of channels: each precision group's logits sorted
// ascending, so the largest go to the channels of largest mean |x| (the end of the order); pruning
// logits unchanged. meet_budget on these keeps what the search learned about how many channels
// each layer needs and takes which ones from the activation statistics (docs/SEARCH.md says why
// that is TOGA-q's default).
std::vector<torch::Tensor> logits_in_channel_order(const std::vector<torch::Tensor>& logits,
                                                   const std::vector<MaskGroup>& groups);

}  // namespace toga
