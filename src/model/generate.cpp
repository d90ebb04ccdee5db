#include "model/generate.h"

#include <algorithm>
#include <chrono>
#include <numeric>

#include "util/error.h"

namespace toga {

double Sampler::uniform() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return double(z >> 11) * (1.0 / 9007199254740992.0);
}

int Sampler::next(const torch::Tensor& logits_row) {
  const auto logits = logits_row.to(torch::kCPU, torch::kFloat32).contiguous();
  if (opts_.temperature <= 0.0) return static_cast<int>(logits.argmax().item<int64_t>());
  const auto probs = torch::softmax(logits / opts_.temperature, -1);
  const float* p = probs.data_ptr<float>();
  const int64_t n = probs.numel();
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  // Nucleus: keep the most probable tokens up to cumulative mass top_p (stable order for ties).
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
  double kept = 0.0;
  int64_t last = n - 1;
  for (int64_t i = 0; i < n; ++i) {
    kept += p[order[i]];
    if (kept >= opts_.top_p) {
      last = i;
      break;
    }
  }
  const double r = uniform() * kept;
  double acc = 0.0;
  for (int64_t i = 0; i <= last; ++i) {
    acc += p[order[i]];
    if (r < acc) return order[i];
  }
  return order[last];
}

int Sampler::next(const float* logits, int64_t vocab) {
  return next(torch::from_blob(const_cast<float*>(logits), {vocab}, torch::kFloat32));
}

std::vector<int> generate(const NextLogits& step, const std::vector<int>& prompt, const SamplingOptions& opts,
                          int64_t vocab, const std::function<void(int)>& on_token, GenerateStats* stats) {
  if (prompt.empty()) fail("generate: empty prompt (give at least a BOS token)");
  using Clock = std::chrono::steady_clock;
  GenerateStats st;
  st.prompt_tokens = int64_t(prompt.size());
  Sampler sampler(opts);
  auto t0 = Clock::now();
  const float* logits = step(prompt);
  st.prefill_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  t0 = Clock::now();
  std::vector<int> out;
  for (int i = 0; i < opts.max_new_tokens; ++i) {
    const int next = sampler.next(logits, vocab);
    if (std::find(opts.stop_ids.begin(), opts.stop_ids.end(), next) != opts.stop_ids.end()) break;
    out.push_back(next);
    if (on_token) on_token(next);
    if (i + 1 == opts.max_new_tokens) break;
    logits = step({next});
    ++st.generated_tokens;  // tokens whose forward ran (the first came from the prompt's)
  }
  st.decode_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  if (stats) *stats = st;
  return out;
}

std::vector<int> generate(const Model& model, const std::vector<int>& prompt, const SamplingOptions& opts,
                          const std::function<void(int)>& on_token, GenerateStats* stats) {
  torch::NoGradGuard no_grad;
  KVCache cache;
  torch::Tensor last;
  const NextLogits step = [&](const std::vector<int>& tokens) {
    std::vector<int64_t> ids(tokens.begin(), tokens.end());
    const auto logits = model.forward(torch::tensor(ids, torch::kLong).unsqueeze(0), &cache);
    last = logits[0][logits.size(1) - 1].to(torch::kCPU, torch::kFloat32).contiguous();
    return last.data_ptr<float>();
  };
  return generate(step, prompt, opts, model.embed.size(0), on_token, stats);
}

std::vector<int> generate(const rt::Transformer& model, const std::vector<int>& prompt, const SamplingOptions& opts,
                          const std::function<void(int)>& on_token, GenerateStats* stats) {
  rt::Session session(model, int64_t(prompt.size()) + std::max(opts.max_new_tokens, 0) + 1);
  std::vector<float> logits(size_t(model.vocab));
  const NextLogits step = [&](const std::vector<int>& tokens) {
    const std::vector<int32_t> ids(tokens.begin(), tokens.end());
    session.forward(ids.data(), int64_t(ids.size()), logits.data(), false);
    return logits.data();
  };
  return generate(step, prompt, opts, model.vocab, on_token, stats);
}

}  // namespace toga
