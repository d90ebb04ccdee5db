// Token generation with the KV cache: greedy or seeded temperature / top-p sampling.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model/model.h"

namespace toga {

struct SamplingOptions {
  int max_new_tokens = 256;
  double temperature = 0.0;  // 0 = greedy argmax
  double top_p = 1.0;
  uint64_t seed = 0;
  std::vector<int> stop_ids;  // generation ends after emitting one of these (it is not returned)
};

// Returns the generated ids (prompt excluded). on_token sees each id as it is produced.
std::vector<int> generate(const Model& model, const std::vector<int>& prompt, const SamplingOptions& opts,
                          const std::function<void(int)>& on_token = {});

// Picks the next token from a logits row: argmax when temperature == 0, else a seeded draw.
class Sampler {
 public:
  explicit Sampler(const SamplingOptions& opts) : opts_(opts), state_(opts.seed ^ 0x9e3779b97f4a7c15ull) {}
  int next(const torch::Tensor& logits_row);

 private:
  double uniform();  // [0, 1), splitmix64: the same stream on every platform
  SamplingOptions opts_;
  uint64_t state_;
};

}  // namespace toga
