// Perplexity and KL divergence over non-overlapping windows, with the protocol of GPTQ, SparseGPT,
// Atom and the TOGA paper: the text tokenized once, split into windows of `seqlen` tokens (tail
// dropped), every window scored from a fresh context, ppl = exp(mean over windows of the window's
// mean NLL). KLD compares a model's next-token distribution with a base model's on the same
// windows, as llama.cpp's perplexity tool reports it (mean, percentiles, top-1 agreement); every
// predicted position of a window counts, or (score_from = seqlen / 2, llama-perplexity's
// --kl-divergence protocol) only those of its second half.
#pragma once

#include <nlohmann/json.hpp>

#include <vector>

#include "model/model.h"
#include "runtime/transformer.h"

namespace toga {

struct WindowOptions {
  int seqlen = 2048;
  int max_windows = 0;  // 0 = all
  int score_from = 0;   // KLD: positions before this one of each window are context only
  bool progress = true;
};

struct PerplexityResult {
  double ppl = 0, mean_nll = 0;
  int64_t windows = 0, seqlen = 0, tokens_total = 0, tokens_scored = 0;
  double seconds = 0, tokens_per_second = 0;
  nlohmann::json to_json() const;
};

struct KLDResult {
  double mean_kld = 0, median_kld = 0, p99_kld = 0, max_kld = 0;
  double top1_agreement = 0;  // fraction of positions where both models' argmax agree
  double base_ppl = 0, model_ppl = 0;
  int64_t windows = 0, seqlen = 0, score_from = 0, tokens_scored = 0;
  double seconds = 0;
  nlohmann::json to_json() const;
};

// Number of whole windows the tokens give (honouring max_windows).
int64_t count_windows(size_t n_tokens, const WindowOptions& opts);

PerplexityResult perplexity(const Model& model, const std::vector<int>& tokens, const WindowOptions& opts);
// The same windows on the libtorch-free runtime forward (runtime/transformer.h).
PerplexityResult perplexity(const rt::Transformer& model, const std::vector<int>& tokens, const WindowOptions& opts);
KLDResult kl_divergence(const Model& base, const Model& model, const std::vector<int>& tokens,
                        const WindowOptions& opts);
// The same on the runtime forward (float64 log-softmax per position, chunked logits).
KLDResult kl_divergence(const rt::Transformer& base, const rt::Transformer& model, const std::vector<int>& tokens,
                        const WindowOptions& opts);

// log-probabilities [T, vocab] in float32 of one window's logits [1, T, vocab].
torch::Tensor window_log_probs(const Model& model, const torch::Tensor& window_ids);

}  // namespace toga
