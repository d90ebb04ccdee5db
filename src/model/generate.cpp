#include "model/generate.h"

#include <algorithm>
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

std::vector<int> generate(const Model& model, const std::vector<int>& prompt, const SamplingOptions& opts,
                          const std::function<void(int)>& on_token) {
  if (prompt.empty()) fail("generate: empty prompt (give at least a BOS token)");
  torch::NoGradGuard no_grad;
  KVCache cache;
  Sampler sampler(opts);
  std::vector<int64_t> ids(prompt.begin(), prompt.end());
  auto logits = model.forward(torch::tensor(ids, torch::kLong).unsqueeze(0), &cache);
  std::vector<int> out;
  for (int step = 0; step < opts.max_new_tokens; ++step) {
    const int next = sampler.next(logits[0][logits.size(1) - 1]);
    if (std::find(opts.stop_ids.begin(), opts.stop_ids.end(), next) != opts.stop_ids.end()) break;
    out.push_back(next);
    if (on_token) on_token(next);
    if (step + 1 == opts.max_new_tokens) break;
    logits = model.forward(torch::tensor({int64_t(next)}, torch::kLong).view({1, 1}), &cache);
  }
  return out;
}

}  // namespace toga
