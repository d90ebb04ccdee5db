#include "eval/perplexity.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "util/error.h"
#include "util/progress.h"

namespace toga {

int64_t count_windows(size_t n_tokens, const WindowOptions& opts) {
  if (opts.seqlen < 2) fail("seqlen must be at least 2, got {}", opts.seqlen);
  int64_t n = static_cast<int64_t>(n_tokens) / opts.seqlen;
  if (opts.max_windows > 0) n = std::min<int64_t>(n, opts.max_windows);
  return n;
}

static torch::Tensor window_ids(const std::vector<int>& tokens, int64_t w, int seqlen) {
  std::vector<int64_t> ids(tokens.begin() + w * seqlen, tokens.begin() + (w + 1) * seqlen);
  return torch::tensor(ids, torch::kLong).unsqueeze(0);
}

torch::Tensor window_log_probs(const Model& model, const torch::Tensor& ids) {
  const auto logits = model.forward(ids);
  return torch::log_softmax(logits[0].to(torch::kFloat32), -1);
}

// Windows, progress and the result; `window_nll` gives one window's mean NLL over its predictions.
static PerplexityResult perplexity_over_windows(const std::vector<int>& tokens, const WindowOptions& opts,
                                                const std::function<double(const int* ids)>& window_nll) {
  const int64_t n = count_windows(tokens.size(), opts);
  if (n == 0) fail("text has {} tokens: fewer than one window of seqlen {}", tokens.size(), opts.seqlen);
  Progress progress("ppl", n, opts.progress);
  double nll_sum = 0.0;
  for (int64_t w = 0; w < n; ++w) {
    nll_sum += window_nll(tokens.data() + w * opts.seqlen);
    progress.update(w + 1, fmt::format("ppl {:.4f}", std::exp(nll_sum / double(w + 1))), (w + 1) * opts.seqlen);
  }
  PerplexityResult r;
  r.windows = n;
  r.seqlen = opts.seqlen;
  r.tokens_total = static_cast<int64_t>(tokens.size());
  r.tokens_scored = n * (opts.seqlen - 1);
  r.mean_nll = nll_sum / double(n);
  r.ppl = std::exp(r.mean_nll);
  r.seconds = progress.elapsed_seconds();
  r.tokens_per_second = double(n * opts.seqlen) / std::max(r.seconds, 1e-9);
  progress.finish(fmt::format("ppl {:.4f}", r.ppl));
  return r;
}

PerplexityResult perplexity(const Model& model, const std::vector<int>& tokens, const WindowOptions& opts) {
  torch::NoGradGuard no_grad;
  return perplexity_over_windows(tokens, opts, [&](const int* window) {
    const auto ids = window_ids(std::vector<int>(window, window + opts.seqlen), 0, opts.seqlen);
    const auto logp = window_log_probs(model, ids);
    const auto targets = ids[0].slice(0, 1).to(logp.device());
    const auto nll = -logp.slice(0, 0, opts.seqlen - 1).gather(1, targets.unsqueeze(1)).squeeze(1);
    return nll.to(torch::kFloat64).mean().item<double>();
  });
}

PerplexityResult perplexity(const rt::Transformer& model, const std::vector<int>& tokens, const WindowOptions& opts) {
  // Logits a chunk of positions at a time (a whole 2048-token window of a 49k vocabulary would be
  // 400 MB); the cache carries the context between chunks.
  constexpr int64_t kChunk = 256;
  rt::Session session(model, opts.seqlen);
  std::vector<float> logits(size_t(kChunk * model.vocab));
  return perplexity_over_windows(tokens, opts, [&](const int* window) {
    session.reset();
    const std::vector<int32_t> ids(window, window + opts.seqlen);
    double nll = 0;
    for (int64_t c0 = 0; c0 < opts.seqlen; c0 += kChunk) {
      const int64_t len = std::min<int64_t>(kChunk, opts.seqlen - c0);
      session.forward(ids.data() + c0, len, logits.data(), true);
      const int64_t scored = std::min<int64_t>(len, opts.seqlen - 1 - c0);  // the last position predicts nothing
#pragma omp parallel for reduction(+ : nll) schedule(static)
      for (int64_t p = 0; p < scored; ++p) {
        const float* row = logits.data() + p * model.vocab;
        const float top = *std::max_element(row, row + model.vocab);
        double sum = 0;
        for (int64_t v = 0; v < model.vocab; ++v) sum += std::exp(double(row[v] - top));
        nll += double(top) + std::log(sum) - double(row[ids[size_t(c0 + p + 1)]]);
      }
    }
    return nll / double(opts.seqlen - 1);
  });
}

// Quantiles, agreement and perplexities from every scored position's KLD (sorted here).
static KLDResult finish_kld(std::vector<float>& klds, double kld_sum, int64_t agree, double nll_base, double nll_model,
                            int64_t n, const WindowOptions& opts, Progress& progress) {
  KLDResult r;
  r.windows = n;
  r.seqlen = opts.seqlen;
  r.score_from = opts.score_from;
  r.tokens_scored = static_cast<int64_t>(klds.size());
  r.mean_kld = kld_sum / double(klds.size());
  std::sort(klds.begin(), klds.end());
  auto quantile = [&](double q) {
    const double pos = q * double(klds.size() - 1);
    const size_t lo = static_cast<size_t>(std::floor(pos)), hi = std::min(lo + 1, klds.size() - 1);
    return double(klds[lo]) + (pos - double(lo)) * double(klds[hi] - klds[lo]);
  };
  r.median_kld = quantile(0.5);
  r.p99_kld = quantile(0.99);
  r.max_kld = klds.back();
  r.top1_agreement = double(agree) / double(klds.size());
  r.base_ppl = std::exp(nll_base / double(n));
  r.model_ppl = std::exp(nll_model / double(n));
  r.seconds = progress.elapsed_seconds();
  progress.finish(fmt::format("mean KLD {:.6f}, top-1 agreement {:.2f}%", r.mean_kld, 100 * r.top1_agreement));
  return r;
}

KLDResult kl_divergence(const Model& base, const Model& model, const std::vector<int>& tokens,
                        const WindowOptions& opts) {
  torch::NoGradGuard no_grad;
  if (base.config.vocab_size != model.config.vocab_size)
    fail("kld: vocabularies differ (base {} vs model {})", base.config.vocab_size, model.config.vocab_size);
  const int64_t n = count_windows(tokens.size(), opts);
  if (n == 0) fail("text has {} tokens: fewer than one window of seqlen {}", tokens.size(), opts.seqlen);
  if (opts.score_from < 0 || opts.score_from >= opts.seqlen - 1)
    fail("kld: scoring from position {} of windows of {}", opts.score_from, opts.seqlen);
  const int64_t from = opts.score_from;
  Progress progress("kld", n, opts.progress);
  std::vector<float> klds;
  klds.reserve(n * (opts.seqlen - 1));
  double nll_base = 0, nll_model = 0, kld_sum = 0;
  int64_t agree = 0;
  for (int64_t w = 0; w < n; ++w) {
    const auto ids = window_ids(tokens, w, opts.seqlen);
    const auto lp = window_log_probs(base, ids).slice(0, from, opts.seqlen - 1);
    const auto lq = window_log_probs(model, ids).slice(0, from, opts.seqlen - 1).to(lp.device());
    const auto targets = ids[0].slice(0, from + 1).to(lp.device()).unsqueeze(1);
    nll_base += -lp.gather(1, targets).to(torch::kFloat64).mean().item<double>();
    nll_model += -lq.gather(1, targets).to(torch::kFloat64).mean().item<double>();
    // KL(P_base || Q_model) per position; clamp tiny negative rounding to zero.
    const auto kld = (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0).to(torch::kCPU).contiguous();
    const float* k = kld.data_ptr<float>();
    klds.insert(klds.end(), k, k + kld.numel());
    kld_sum += kld.to(torch::kFloat64).sum().item<double>();
    agree += (lp.argmax(-1) == lq.argmax(-1)).sum().item<int64_t>();
    progress.update(w + 1, fmt::format("mean KLD {:.5f}", kld_sum / double(klds.size())), (w + 1) * opts.seqlen);
  }
  return finish_kld(klds, kld_sum, agree, nll_base, nll_model, n, opts, progress);
}

KLDResult kl_divergence(const rt::Transformer& base, const rt::Transformer& model, const std::vector<int>& tokens,
                        const WindowOptions& opts) {
  if (base.vocab != model.vocab) fail("kld: vocabularies differ (base {} vs model {})", base.vocab, model.vocab);
  const int64_t n = count_windows(tokens.size(), opts);
  if (n == 0) fail("text has {} tokens: fewer than one window of seqlen {}", tokens.size(), opts.seqlen);
  if (opts.score_from < 0 || opts.score_from >= opts.seqlen - 1)
    fail("kld: scoring from position {} of windows of {}", opts.score_from, opts.seqlen);
  constexpr int64_t kChunk = 128;
  const int64_t V = base.vocab, from = opts.score_from, per_window = opts.seqlen - 1 - from;
  rt::Session sb(base, opts.seqlen), sm(model, opts.seqlen);
  std::vector<float> lb(size_t(kChunk * V)), lm(size_t(kChunk * V));
  std::vector<float> klds(size_t(n * per_window));
  double nll_base = 0, nll_model = 0, kld_sum = 0;
  int64_t agree = 0;
  Progress progress("kld", n, opts.progress);
  for (int64_t w = 0; w < n; ++w) {
    const std::vector<int32_t> ids(tokens.begin() + w * opts.seqlen, tokens.begin() + (w + 1) * opts.seqlen);
    sb.reset();
    sm.reset();
    double wb = 0, wm = 0;
    for (int64_t c0 = 0; c0 < opts.seqlen - 1; c0 += kChunk) {
      const int64_t len = std::min<int64_t>(kChunk, opts.seqlen - c0);
      sb.forward(ids.data() + c0, len, lb.data(), true);
      sm.forward(ids.data() + c0, len, lm.data(), true);
      const int64_t p0 = std::max<int64_t>(from, c0), p1 = std::min<int64_t>(c0 + len, opts.seqlen - 1);
#pragma omp parallel for schedule(static) reduction(+ : wb, wm, kld_sum, agree)
      for (int64_t p = p0; p < p1; ++p) {
        // In float64: log-softmax of both rows, KL(P_base || Q_model), NLLs, argmaxes.
        const float* xb = lb.data() + (p - c0) * V;
        const float* xm = lm.data() + (p - c0) * V;
        int64_t ab = 0, am = 0;
        for (int64_t v = 1; v < V; ++v) {
          if (xb[v] > xb[ab]) ab = v;
          if (xm[v] > xm[am]) am = v;
        }
        double zb = 0, zm = 0;
        for (int64_t v = 0; v < V; ++v) {
          zb += std::exp(double(xb[v]) - double(xb[ab]));
          zm += std::exp(double(xm[v]) - double(xm[am]));
        }
        const double lse_b = double(xb[ab]) + std::log(zb), lse_m = double(xm[am]) + std::log(zm);
        double kld = 0;
        for (int64_t v = 0; v < V; ++v) {
          const double pb = double(xb[v]) - lse_b;
          kld += std::exp(pb) * (pb - (double(xm[v]) - lse_m));
        }
        kld = std::max(kld, 0.0);
        klds[size_t(w * per_window + p - from)] = float(kld);
        kld_sum += kld;
        agree += ab == am;
        const int target = ids[size_t(p + 1)];
        wb += lse_b - double(xb[target]);
        wm += lse_m - double(xm[target]);
      }
    }
    nll_base += wb / double(per_window);
    nll_model += wm / double(per_window);
    progress.update(w + 1, fmt::format("mean KLD {:.5f}", kld_sum / double((w + 1) * per_window)), (w + 1) * opts.seqlen);
  }
  return finish_kld(klds, kld_sum, agree, nll_base, nll_model, n, opts, progress);
}

nlohmann::json PerplexityResult::to_json() const {
  return {{"ppl", ppl},          {"mean_nll", mean_nll},           {"windows", windows},
          {"seqlen", seqlen},    {"tokens_total", tokens_total},   {"tokens_scored", tokens_scored},
          {"seconds", seconds},  {"tokens_per_second", tokens_per_second}};
}

nlohmann::json KLDResult::to_json() const {
  return {{"mean_kld", mean_kld},     {"median_kld", median_kld}, {"p99_kld", p99_kld},
          {"max_kld", max_kld},       {"top1_agreement", top1_agreement},
          {"base_ppl", base_ppl},     {"model_ppl", model_ppl},   {"windows", windows},
          {"seqlen", seqlen},         {"score_from", score_from}, {"tokens_scored", tokens_scored},
          {"seconds", seconds}};
}

}  // namespace toga
