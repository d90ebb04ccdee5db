// Token generation with the KV cache: greedy or seeded temperature / top-p sampling.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model/model.h"
#include "runtime/transformer.h"

namespace toga {

struct SamplingOptions {
  int max_new_tokens = 256;
  double temperature = 0.0;  // 0 = greedy argmax
  double top_p = 1.0;
  uint64_t seed = 0;
  std::vector<int> stop_ids;  // generation ends after emitting one of these (it is not returned)
};

// Seconds spent on the prompt (prefill) and on the generated tokens (decode).
struct GenerateStats {
  int64_t prompt_tokens = 0, generated_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;
};

// One engine step: runs `tokens` after those already seen, returns the last one's logits [vocab].
using NextLogits = std::function<const float*(const std::vector<int>& tokens)>;

// Returns the generated ids (prompt excluded). on_token sees each id as it is produced.
std::vector<int> generate(const NextLogits& step, const std::vector<int>& prompt, const SamplingOptions& opts,
                          int64_t vocab, const std::function<void(int)>& on_token = {}, GenerateStats* stats = nullptr);
// On the libtorch forward, or on the runtime forward (runtime/transformer.h).
std::vector<int> generate(const Model& model, const std::vector<int>& prompt, const SamplingOptions& opts,
                          const std::function<void(int)>& on_token = {}, GenerateStats* stats = nullptr);
std::vector<int> generate(const rt::Transformer& model, const std::vector<int>& prompt, const SamplingOptions& opts,
                          const std::function<void(int)>& on_token = {}, GenerateStats* stats = nullptr);

// Picks the next token from a logits row: argmax when temperature == 0, else a seeded draw.
class Sampler {
 public:
  explicit Sampler(const SamplingOptions& opts) : opts_(opts), state_(opts.seed ^ 0x9e3779b97f4a7c15ull) {}
  int next(const torch::Tensor& logits_row);
  int next(const float* logits, int64_t vocab);

 private:
  double uniform();  // [0, 1), splitmix64: the same stream on every platform
  SamplingOptions opts_;
  uint64_t state_;
};

}  // namespace toga
