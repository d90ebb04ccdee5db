// Zero/few-shot multiple-choice evaluation scored as lm-evaluation-harness scores it: the summed
// log-likelihood of each choice's continuation given its context; acc = argmax ll, acc_norm =
// argmax ll / len(choice) in code points. The harness runs one forward pass per (context, choice);
// here each item runs its choices' common token prefix once, then every distinct remaining suffix as
// one right-padded batch on the broadcast KV cache, and lm_head only at the scored positions.
#pragma once

#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <vector>

#include "eval/task_data.h"
#include "model/model.h"
#include "runtime/transformer.h"
#include "tokenizer/tokenizer.h"

namespace toga {

// One request in tokens, split as the harness's _encode_pair splits it.
struct EncodedRequest {
  std::vector<int> context;
  std::vector<int> continuation;
};

// lm-eval's tokenization of (context, continuation): trailing white space of the context moves to
// the continuation; whole = encode(context + continuation), context = encode(context), and the
// continuation tokens are whole[len(context):] (so a first token that merges across the boundary
// is attributed to the continuation). Strings are encoded as the HF tokenizer's default does
// (BOS when the tokenizer adds one, special tokens recognised). An empty context becomes the
// prefix token (BOS, else EOS) unless the continuation already starts with it.
EncodedRequest encode_request(const Tokenizer& tok, const std::string& context, const std::string& continuation);

struct RequestScore {
  double ll = 0;        // summed log-probability of the continuation tokens
  bool greedy = false;  // every continuation token is the argmax (the harness's is_greedy)
};

struct ScoreOptions {
  int64_t batch_tokens = 8192;  // cap on padded suffix tokens per forward (rows x longest suffix)
  int64_t max_length = 0;       // context window; 0 = the model's max_position_embeddings
  bool progress = true;
  std::string label = "tasks";
};

struct ScoreStats {
  int64_t tokens_forwarded = 0;  // tokens through the model (shared prefixes once, no padding)
  int64_t tokens_requested = 0;  // what one forward per request would process (the harness's cost)
  double seconds = 0;
};

// Scores groups of requests (the choices of one item); groups run longest first, results come back
// in input order.
std::vector<std::vector<RequestScore>> score_request_groups(const Model& model,
                                                            const std::vector<std::vector<EncodedRequest>>& groups,
                                                            const ScoreOptions& opts, ScoreStats* stats = nullptr);

// The same scores on the runtime forward (runtime/transformer.h): an item's shared prefix once, each
// distinct row after it on the cache cut back to the prefix, float64 log-softmax at scored positions.
std::vector<std::vector<RequestScore>> score_request_groups(const rt::Transformer& model, int64_t max_position,
                                                            const std::vector<std::vector<EncodedRequest>>& groups,
                                                            const ScoreOptions& opts, ScoreStats* stats = nullptr);

// The reference: one full forward per request, as the harness computes it (tests compare with it).
RequestScore score_request_naive(const Model& model, const EncodedRequest& req, int64_t max_length = 0);

struct ItemResult {
  std::vector<double> ll;
  std::vector<bool> greedy;
  int pred = -1, pred_norm = -1;
};

struct MetricValue {
  double value = 0, stderr_ = 0;
};

struct TaskResult {
  std::string task, source;
  bool reports_acc_norm = false;
  int64_t n = 0, limit = 0;
  int fewshot = 0;
  MetricValue acc, acc_norm;
  // MMLU: per subject and per category (harness groups), n and acc.
  struct Group {
    int64_t n = 0;
    MetricValue acc;
  };
  std::map<std::string, Group> subjects, categories;
  ScoreStats stats;
  std::vector<ItemResult> items;  // parallel to the task's items

  // The number the paper's tables report: acc_norm where the harness reports it, acc otherwise.
  double headline() const { return reports_acc_norm ? acc_norm.value : acc.value; }
  const char* headline_metric() const { return reports_acc_norm ? "acc_norm" : "acc"; }
  nlohmann::json to_json() const;
};

// Predictions and metrics of one item from its choices' log-likelihoods (np.argmax: first maximum).
ItemResult judge_item(const TaskItem& item, const std::vector<RequestScore>& scores);

// On the runtime forward when `runtime` is given (built from `model`), else on libtorch.
TaskResult evaluate_task(const Model& model, const Tokenizer& tok, const Task& task, const ScoreOptions& opts,
                         const rt::Transformer* runtime = nullptr);

// Per-item lines for cross-checking with the harness (task, doc index, lls, predictions).
nlohmann::json item_records(const Task& task, const TaskResult& r);

// Sample standard error of a mean of 0/1 scores (the harness's mean_stderr).
double mean_stderr(double sum, double sum_sq, int64_t n);

}  // namespace toga
