#include "eval/tasks.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <functional>
#include <map>
#include <numeric>

#include "util/error.h"
#include "util/progress.h"

namespace toga {

namespace {

// HF's tokenizer(text) with default arguments: special tokens written in the text are recognised and
// BOS is prepended when the tokenizer's post-processor adds one. (The harness's has_bos_prefix
// exception, a text that already starts with the BOS string, does not arise in these tasks.)
std::vector<int> tok_encode(const Tokenizer& tok, const std::string& s) {
  std::vector<int> ids;
  if (tok.add_bos && tok.bos_id >= 0) ids.push_back(tok.bos_id);
  const auto body = tok.encode(s, /*allow_special=*/true);
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

int64_t model_window(const Model& model, int64_t max_length) {
  return max_length > 0 ? max_length : int64_t(model.config.max_position_embeddings);
}

// What one request feeds the model and scores, after the harness's left truncation to the window:
// input = (context + continuation)[-(window+1):][:-1], scored positions = the last len(continuation).
struct PreparedRequest {
  std::vector<int64_t> input;
  std::vector<int64_t> targets;
  int64_t first = 0;  // position in `input` whose logits predict targets[0]
};

PreparedRequest prepare(const EncodedRequest& r, int64_t window) {
  const int64_t c = int64_t(r.continuation.size());
  if (c > window) fail("a continuation of {} tokens does not fit the context window of {}", c, window);
  std::vector<int64_t> full(r.context.begin(), r.context.end());
  full.insert(full.end(), r.continuation.begin(), r.continuation.end());
  if (int64_t(full.size()) > window + 1) full.erase(full.begin(), full.end() - (window + 1));
  PreparedRequest p;
  p.targets.assign(full.end() - c, full.end());
  if (!full.empty()) full.pop_back();
  p.input = std::move(full);
  p.first = int64_t(p.input.size()) - c;
  if (c > 0 && p.first < 0) fail("a request's context encodes to no tokens: nothing conditions its continuation");
  return p;
}

// An item's forward plan: the common prefix runs once; each request reads its positions from one of
// the distinct suffix rows (a request whose suffix is a prefix of a longer row reuses that row: with
// a causal mask its logits there are the same).
struct GroupPlan {
  std::vector<int64_t> prefix;
  std::vector<std::vector<int64_t>> rows;  // longest first
  struct Req {
    int row = -1;        // -1: nothing to score
    int64_t first = 0;   // in row coordinates
    std::vector<int64_t> targets;
  };
  std::vector<Req> reqs;
  int64_t requested_tokens = 0;
};

GroupPlan plan_group(const std::vector<EncodedRequest>& group, int64_t window) {
  std::vector<PreparedRequest> prep;
  prep.reserve(group.size());
  for (const auto& r : group) prep.push_back(prepare(r, window));
  GroupPlan plan;
  // The prefix may not reach a scored position: its logits are not kept.
  int64_t P = std::numeric_limits<int64_t>::max();
  for (const auto& p : prep) {
    plan.requested_tokens += int64_t(p.input.size());
    if (!p.targets.empty()) P = std::min(P, p.first);
  }
  if (P == std::numeric_limits<int64_t>::max()) P = 0;
  for (int64_t i = 0; i < P; ++i) {
    bool same = true;
    for (const auto& p : prep) same = same && i < int64_t(p.input.size()) && p.input[i] == prep[0].input[i];
    if (!same) {
      P = i;
      break;
    }
  }
  plan.prefix.assign(prep[0].input.begin(), prep[0].input.begin() + P);

  std::vector<size_t> order(prep.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return prep[a].input.size() > prep[b].input.size(); });
  plan.reqs.resize(prep.size());
  for (size_t i : order) {
    auto& q = plan.reqs[i];
    if (prep[i].targets.empty()) continue;
    const std::vector<int64_t> suffix(prep[i].input.begin() + P, prep[i].input.end());
    q.first = prep[i].first - P;
    q.targets = prep[i].targets;
    for (size_t r = 0; r < plan.rows.size() && q.row < 0; ++r)
      if (plan.rows[r].size() >= suffix.size() && std::equal(suffix.begin(), suffix.end(), plan.rows[r].begin()))
        q.row = int(r);
    if (q.row < 0) {
      q.row = int(plan.rows.size());
      plan.rows.push_back(suffix);
    }
  }
  return plan;
}

torch::Tensor ids_tensor(const std::vector<int64_t>& ids) {
  return torch::tensor(ids, torch::kLong).unsqueeze(0);
}

// One item with a single distinct row gains nothing from a cached prefix: it runs whole, which lets
// such items (MMLU, BoolQ: one-token choices) share batches across items.
void fold_prefix_into_single_row(GroupPlan& plan) {
  if (plan.rows.size() != 1 || plan.prefix.empty()) return;
  const int64_t P = int64_t(plan.prefix.size());
  plan.rows[0].insert(plan.rows[0].begin(), plan.prefix.begin(), plan.prefix.end());
  plan.prefix.clear();
  for (auto& q : plan.reqs)
    if (q.row >= 0) q.first += P;
}

// A scored request's view of a row in a batch.
struct RowRequest {
  int row;  // in the batch
  int64_t first;
  const std::vector<int64_t>* targets;
  RequestScore* out;
};

// Runs rows as one right-padded batch and adds each request's log-likelihood. With a prefix cache
// (batch = the items' prefixes), row r continues prefix row_prefix[r]: the cache is gathered to one
// batch row per suffix row (KVCache::broadcast_batch generalised to several prefixes), on a copy, so
// the prefix cache serves further batches.
void run_rows(const Model& model, const std::vector<const std::vector<int64_t>*>& rows, const KVCache* prefix_cache,
              const std::vector<int64_t>& row_prefix, const std::vector<RowRequest>& reqs, int64_t* forwarded) {
  const int64_t n = int64_t(rows.size());
  int64_t T = 0;
  for (const auto* r : rows) T = std::max<int64_t>(T, int64_t(r->size()));
  const int64_t H = model.config.hidden_size;
  // Right padding: the causal mask keeps padded positions out of every real position's attention.
  auto ids = torch::zeros({n, T}, torch::kLong);
  auto acc = ids.accessor<int64_t, 2>();
  for (int64_t r = 0; r < n; ++r) {
    const auto& row = *rows[r];
    for (int64_t t = 0; t < int64_t(row.size()); ++t) acc[r][t] = row[t];
    *forwarded += int64_t(row.size());
  }
  torch::Tensor hidden;
  if (prefix_cache) {
    KVCache cache = *prefix_cache;
    const auto idx = torch::tensor(row_prefix, torch::kLong).to(model.device());
    if (cache.k.empty() || cache.k[0].size(0) == 1) {
      cache.broadcast_batch(n);
    } else {
      for (auto* list : {&cache.k, &cache.v})
        for (auto& t : *list) t = t.index_select(0, idx);
    }
    hidden = model.forward_hidden(ids.to(model.device()), &cache);
  } else {
    hidden = model.forward_hidden(ids.to(model.device()));
  }
  // lm_head only where a continuation token is predicted, each position once.
  std::vector<int64_t> flat;
  std::vector<int64_t> slot_index(size_t(n * T), -1);
  std::vector<std::vector<int64_t>> slots(reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    const auto& q = reqs[i];
    for (size_t k = 0; k < q.targets->size(); ++k) {
      const int64_t f = int64_t(q.row) * T + q.first + int64_t(k);
      if (slot_index[f] < 0) {
        slot_index[f] = int64_t(flat.size());
        flat.push_back(f);
      }
      slots[i].push_back(slot_index[f]);
    }
  }
  if (flat.empty()) return;
  const auto sel = hidden.reshape({n * T, H}).index_select(0, torch::tensor(flat, torch::kLong).to(hidden.device()));
  const auto logp = torch::log_softmax(model.lm_head.forward(sel).to(torch::kFloat32), -1).to(torch::kCPU);
  const auto best = logp.argmax(-1).contiguous();
  const auto lp = logp.accessor<float, 2>();
  const auto bp = best.accessor<int64_t, 1>();
  for (size_t i = 0; i < reqs.size(); ++i) {
    const auto& q = reqs[i];
    for (size_t k = 0; k < slots[i].size(); ++k) {
      const int64_t s = slots[i][k];
      const int64_t target = (*q.targets)[k];
      q.out->ll += double(lp[s][target]);
      q.out->greedy = q.out->greedy && bp[s] == target;
    }
  }
}

// How many of `lengths` (longest first, from `a`) fit one batch of `batch_tokens` padded tokens.
size_t chunk_end(const std::vector<int64_t>& lengths, size_t a, int64_t batch_tokens) {
  const int64_t T = lengths[a];
  size_t b = a + 1;
  while (b < lengths.size() && int64_t(b - a + 1) * T <= std::max<int64_t>(batch_tokens, T)) ++b;
  return b;
}

// Items with a shared prefix, several at once when their prefixes have the same length (one cache
// length for the batch): the prefixes as one batch, then every suffix row of those items as one
// right-padded batch on the gathered cache.
void run_prefixed(const Model& model, const std::vector<GroupPlan>& plans, const std::vector<size_t>& items,
                  int64_t batch_tokens, std::vector<std::vector<RequestScore>>& out, int64_t* forwarded) {
  const int64_t P = int64_t(plans[items[0]].prefix.size());
  const int64_t m = int64_t(items.size());
  auto ids = torch::empty({m, P}, torch::kLong);
  auto acc = ids.accessor<int64_t, 2>();
  for (int64_t i = 0; i < m; ++i)
    for (int64_t t = 0; t < P; ++t) acc[i][t] = plans[items[i]].prefix[t];
  KVCache cache;
  model.forward_hidden(ids.to(model.device()), &cache);
  *forwarded += m * P;

  struct Row {
    int64_t item;  // in `items`
    int row;
  };
  std::vector<Row> rows;
  for (int64_t i = 0; i < m; ++i)
    for (int r = 0; r < int(plans[items[i]].rows.size()); ++r) rows.push_back({i, r});
  auto len = [&](const Row& r) { return int64_t(plans[items[r.item]].rows[r.row].size()); };
  std::stable_sort(rows.begin(), rows.end(), [&](const Row& a, const Row& b) { return len(a) > len(b); });
  std::vector<int64_t> lengths;
  for (const auto& r : rows) lengths.push_back(len(r));
  for (size_t a = 0; a < rows.size();) {
    const size_t b = chunk_end(lengths, a, batch_tokens);
    std::vector<const std::vector<int64_t>*> batch;
    std::vector<int64_t> row_prefix;
    std::vector<RowRequest> reqs;
    for (size_t k = a; k < b; ++k) {
      const auto& plan = plans[items[rows[k].item]];
      batch.push_back(&plan.rows[rows[k].row]);
      row_prefix.push_back(rows[k].item);
      for (size_t i = 0; i < plan.reqs.size(); ++i)
        if (plan.reqs[i].row == rows[k].row)
          reqs.push_back({int(k - a), plan.reqs[i].first, &plan.reqs[i].targets, &out[items[rows[k].item]][i]});
    }
    run_rows(model, batch, &cache, row_prefix, reqs, forwarded);
    a = b;
  }
}

// numpy.argmax: the first maximum, a NaN counting as the maximum.
int np_argmax(const std::vector<double>& v) {
  int best = 0;
  for (int i = 0; i < int(v.size()); ++i) {
    if (std::isnan(v[i])) return i;
    if (v[i] > v[best]) best = i;
  }
  return best;
}

double pooled_stderr(const std::vector<std::pair<int64_t, double>>& groups) {
  // The harness's pooled_sample_stderr for size-weighted group means.
  double num = 0;
  int64_t N = 0;
  for (const auto& [n, se] : groups) {
    num += double(n - 1) * se * se * double(n);
    N += n;
  }
  const int64_t dof = N - int64_t(groups.size());
  if (dof <= 0) return std::nan("");
  return std::sqrt(num / double(dof) / double(N));
}

nlohmann::json number_or_null(double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr); }

}  // namespace

EncodedRequest encode_request(const Tokenizer& tok, const std::string& context, const std::string& continuation) {
  EncodedRequest r;
  if (context.empty()) {
    r.continuation = tok.encode(continuation, /*allow_special=*/true);
    const int prefix = tok.bos_id >= 0 ? tok.bos_id : tok.eos_id;
    if (prefix < 0) fail_file(tok.source, "an empty context needs a BOS or EOS token, and the tokenizer has neither");
    if (!r.continuation.empty() && r.continuation[0] == prefix) {
      r.context = {prefix};
      r.continuation.erase(r.continuation.begin());
    } else {
      r.context = {prefix};
    }
    return r;
  }
  const std::string ctx = python_rstrip(context);
  const std::string cont = context.substr(ctx.size()) + continuation;
  const auto whole = tok_encode(tok, ctx + cont);
  r.context = tok_encode(tok, ctx);
  if (r.context.size() < whole.size()) r.continuation.assign(whole.begin() + r.context.size(), whole.end());
  return r;
}

std::vector<std::vector<RequestScore>> score_request_groups(const Model& model,
                                                            const std::vector<std::vector<EncodedRequest>>& groups,
                                                            const ScoreOptions& opts, ScoreStats* stats) {
  torch::NoGradGuard no_grad;
  const int64_t window = model_window(model, opts.max_length);
  std::vector<GroupPlan> plans(groups.size());
  std::exception_ptr error;
#pragma omp parallel for schedule(dynamic, 16)
  for (size_t g = 0; g < groups.size(); ++g) {
    try {
      plans[g] = plan_group(groups[g], window);
    } catch (...) {
#pragma omp critical
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);

  // Longest first, as the harness orders its requests.
  std::vector<size_t> order(groups.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return plans[a].requested_tokens > plans[b].requested_tokens; });

  ScoreStats st;
  for (auto& p : plans) {
    st.tokens_requested += p.requested_tokens;
    fold_prefix_into_single_row(p);
  }
  std::vector<std::vector<RequestScore>> out(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) out[g].assign(groups[g].size(), RequestScore{0.0, true});
  // Progress counts planned tokens, not items: items run longest first, so an item count would
  // put the ETA several times too high early on.
  auto planned_tokens = [&](size_t g) {
    int64_t t = int64_t(plans[g].prefix.size());
    for (const auto& r : plans[g].rows) t += int64_t(r.size());
    return t;
  };
  int64_t work_total = 0, work_done = 0;
  for (size_t g = 0; g < groups.size(); ++g) work_total += planned_tokens(g);
  Progress progress(opts.label, std::max<int64_t>(work_total, 1), opts.progress);
  int64_t done = 0;
  auto report = [&] {
    progress.update(std::min(work_done, work_total), fmt::format("{}/{} items", done, groups.size()),
                    st.tokens_forwarded);
  };

  // Items without a shared prefix: their rows, longest first, batched across items.
  struct PooledRow {
    size_t group;
    int row;
  };
  std::vector<PooledRow> pool;
  std::vector<int> rows_left(groups.size(), 0);
  for (size_t g : order)
    if (plans[g].prefix.empty()) {
      for (int r = 0; r < int(plans[g].rows.size()); ++r) pool.push_back({g, r});
      rows_left[g] = int(plans[g].rows.size());
      if (rows_left[g] == 0) ++done;
    }
  std::stable_sort(pool.begin(), pool.end(), [&](const PooledRow& a, const PooledRow& b) {
    return plans[a.group].rows[a.row].size() > plans[b.group].rows[b.row].size();
  });
  std::vector<int64_t> lengths;
  for (const auto& p : pool) lengths.push_back(int64_t(plans[p.group].rows[p.row].size()));
  for (size_t a = 0; a < pool.size();) {
    const size_t b = chunk_end(lengths, a, opts.batch_tokens);
    std::vector<const std::vector<int64_t>*> rows;
    std::vector<RowRequest> reqs;
    for (size_t k = a; k < b; ++k) {
      const auto& p = pool[k];
      rows.push_back(&plans[p.group].rows[p.row]);
      const auto& plan = plans[p.group];
      for (size_t i = 0; i < plan.reqs.size(); ++i)
        if (plan.reqs[i].row == p.row)
          reqs.push_back({int(k - a), plan.reqs[i].first, &plan.reqs[i].targets, &out[p.group][i]});
    }
    run_rows(model, rows, nullptr, {}, reqs, &st.tokens_forwarded);
    for (size_t k = a; k < b; ++k) {
      work_done += int64_t(plans[pool[k].group].rows[pool[k].row].size());
      if (--rows_left[pool[k].group] == 0) ++done;
    }
    report();
    a = b;
  }

  // The rest by prefix length, longest first; within a length, items with long suffix rows together.
  std::map<int64_t, std::vector<size_t>, std::greater<int64_t>> by_prefix;
  for (size_t g : order)
    if (!plans[g].prefix.empty()) by_prefix[int64_t(plans[g].prefix.size())].push_back(g);
  for (auto& [P, items] : by_prefix) {
    auto longest = [&](size_t g) { return plans[g].rows.empty() ? size_t(0) : plans[g].rows[0].size(); };
    std::stable_sort(items.begin(), items.end(), [&](size_t a, size_t b) { return longest(a) > longest(b); });
    for (size_t a = 0; a < items.size();) {
      // As many items as keep both the prefix batch and the suffix batch within the token budget.
      size_t b = a;
      int64_t rows = 0, T = 0;
      while (b < items.size()) {
        const auto& pl = plans[items[b]];
        const int64_t r2 = rows + int64_t(pl.rows.size());
        const int64_t T2 = std::max<int64_t>(T, int64_t(longest(items[b])));
        if (b > a && (int64_t(b - a + 1) * P > opts.batch_tokens || r2 * T2 > opts.batch_tokens)) break;
        rows = r2;
        T = T2;
        ++b;
      }
      const std::vector<size_t> chunk(items.begin() + a, items.begin() + b);
      run_prefixed(model, plans, chunk, opts.batch_tokens, out, &st.tokens_forwarded);
      done += int64_t(chunk.size());
      for (size_t g : chunk) work_done += planned_tokens(g);
      report();
      a = b;
    }
  }
  st.seconds = progress.elapsed_seconds();
  progress.finish(fmt::format("{} tokens forwarded ({} requested), {:.0f} tok/s", st.tokens_forwarded,
                              st.tokens_requested, double(st.tokens_forwarded) / std::max(st.seconds, 1e-9)));
  if (stats) *stats = st;
  return out;
}

std::vector<std::vector<RequestScore>> score_request_groups(const rt::Transformer& model, int64_t max_position,
                                                            const std::vector<std::vector<EncodedRequest>>& groups,
                                                            const ScoreOptions& opts, ScoreStats* stats) {
  const int64_t window = opts.max_length > 0 ? opts.max_length : max_position;
  std::vector<GroupPlan> plans(groups.size());
  ScoreStats st;
  int64_t work_total = 0, capacity = 1;
  for (size_t g = 0; g < groups.size(); ++g) {
    plans[g] = plan_group(groups[g], window);
    st.tokens_requested += plans[g].requested_tokens;
    int64_t longest = 0;
    for (const auto& r : plans[g].rows) longest = std::max<int64_t>(longest, int64_t(r.size()));
    capacity = std::max<int64_t>(capacity, int64_t(plans[g].prefix.size()) + longest);
    work_total += int64_t(plans[g].prefix.size());
    for (const auto& r : plans[g].rows) work_total += int64_t(r.size());
  }
  // One item at a time: its prefix once, then each distinct row after it (the cache cut back to the
  // prefix in between); logits only from a row's first scored position on.
  rt::Session session(model, capacity);
  std::vector<float> logits;
  std::vector<std::vector<RequestScore>> out(groups.size());
  Progress progress(opts.label, std::max<int64_t>(work_total, 1), opts.progress);
  int64_t work_done = 0;
  for (size_t g = 0; g < groups.size(); ++g) {
    const GroupPlan& plan = plans[g];
    out[g].assign(groups[g].size(), RequestScore{0.0, true});
    const std::vector<int32_t> prefix(plan.prefix.begin(), plan.prefix.end());
    session.reset();
    if (!prefix.empty()) {
      logits.resize(size_t(model.vocab));
      session.forward(prefix.data(), int64_t(prefix.size()), logits.data(), false);
      st.tokens_forwarded += int64_t(prefix.size());
    }
    for (int r = 0; r < int(plan.rows.size()); ++r) {
      const std::vector<int32_t> row(plan.rows[r].begin(), plan.rows[r].end());
      int64_t first = int64_t(row.size());
      for (const auto& q : plan.reqs)
        if (q.row == r) first = std::min(first, q.first);
      session.truncate(int64_t(prefix.size()));
      if (first > 0) {
        logits.resize(size_t(model.vocab));
        session.forward(row.data(), first, logits.data(), false);
      }
      const int64_t scored = int64_t(row.size()) - first;
      logits.resize(size_t(scored * model.vocab));
      session.forward(row.data() + first, scored, logits.data(), true);
      st.tokens_forwarded += int64_t(row.size());
      for (size_t i = 0; i < plan.reqs.size(); ++i) {
        const auto& q = plan.reqs[i];
        if (q.row != r) continue;
        RequestScore& sc = out[g][i];
        for (size_t k = 0; k < q.targets.size(); ++k) {
          const float* x = logits.data() + (q.first - first + int64_t(k)) * model.vocab;
          int64_t best = 0;
          for (int64_t v = 1; v < model.vocab; ++v)
            if (x[v] > x[best]) best = v;
          double z = 0;
          for (int64_t v = 0; v < model.vocab; ++v) z += std::exp(double(x[v]) - double(x[best]));
          sc.ll += double(x[q.targets[k]]) - double(x[best]) - std::log(z);
          sc.greedy = sc.greedy && best == q.targets[k];
        }
      }
      work_done += int64_t(row.size());
    }
    work_done += int64_t(prefix.size());
    progress.update(std::min(work_done, work_total), fmt::format("{}/{} items", g + 1, groups.size()), st.tokens_forwarded);
  }
  st.seconds = progress.elapsed_seconds();
  progress.finish(fmt::format("{} tokens forwarded ({} requested), {:.0f} tok/s", st.tokens_forwarded,
                              st.tokens_requested, double(st.tokens_forwarded) / std::max(st.seconds, 1e-9)));
  if (stats) *stats = st;
  return out;
}

RequestScore score_request_naive(const Model& model, const EncodedRequest& req, int64_t max_length) {
  torch::NoGradGuard no_grad;
  const auto p = prepare(req, model_window(model, max_length));
  RequestScore s;
  s.greedy = true;
  if (p.targets.empty()) return s;
  const auto logp = torch::log_softmax(model.forward(ids_tensor(p.input).to(model.device()))[0].to(torch::kFloat32), -1)
                        .to(torch::kCPU);
  for (size_t k = 0; k < p.targets.size(); ++k) {
    const auto row = logp[p.first + int64_t(k)];
    s.ll += row[p.targets[k]].item<double>();
    s.greedy = s.greedy && row.argmax().item<int64_t>() == p.targets[k];
  }
  return s;
}

double mean_stderr(double sum, double sum_sq, int64_t n) {
  if (n < 2) return std::nan("");
  const double mean = sum / double(n);
  const double var = std::max(0.0, (sum_sq - double(n) * mean * mean) / double(n - 1));
  return std::sqrt(var / double(n));
}

ItemResult judge_item(const TaskItem& item, const std::vector<RequestScore>& scores) {
  ItemResult r;
  std::vector<double> norm;
  for (size_t i = 0; i < scores.size(); ++i) {
    r.ll.push_back(scores[i].ll);
    r.greedy.push_back(scores[i].greedy);
    // The harness divides by len() of the doc_to_choice string: code points, no leading space.
    norm.push_back(scores[i].ll / double(utf8_length(item.choices.at(i))));
  }
  r.pred = np_argmax(r.ll);
  r.pred_norm = np_argmax(norm);
  return r;
}

TaskResult evaluate_task(const Model& model, const Tokenizer& tok, const Task& task, const ScoreOptions& opts,
                         const rt::Transformer* runtime) {
  std::vector<std::vector<EncodedRequest>> groups(task.items.size());
  std::exception_ptr error;
#pragma omp parallel for schedule(dynamic, 16)
  for (size_t i = 0; i < task.items.size(); ++i) {
    try {
      for (const auto& rq : task.items[i].requests) groups[i].push_back(encode_request(tok, rq.context, rq.continuation));
    } catch (...) {
#pragma omp critical
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);

  ScoreOptions o = opts;
  o.label = task.name;
  TaskResult r;
  r.task = task.name;
  r.source = task.source;
  r.reports_acc_norm = task.reports_acc_norm;
  r.n = int64_t(task.items.size());
  if (r.n == 0) fail("task {} has no items", task.name);
  const auto scores = runtime ? score_request_groups(*runtime, model.config.max_position_embeddings, groups, o, &r.stats)
                              : score_request_groups(model, groups, o, &r.stats);

  struct Sum {
    int64_t n = 0;
    double acc = 0;
  };
  double acc = 0, acc_norm = 0;
  std::map<std::string, Sum> subj;
  for (size_t i = 0; i < task.items.size(); ++i) {
    r.items.push_back(judge_item(task.items[i], scores[i]));
    const auto& it = r.items.back();
    const double a = it.pred == task.items[i].label, an = it.pred_norm == task.items[i].label;
    acc += a;
    acc_norm += an;
    if (!task.items[i].subject.empty()) {
      auto& s = subj[task.items[i].subject];
      ++s.n;
      s.acc += a;
    }
  }
  // 0/1 scores: the sum of squares equals the sum.
  r.acc = {acc / double(r.n), mean_stderr(acc, acc, r.n)};
  r.acc_norm = {acc_norm / double(r.n), mean_stderr(acc_norm, acc_norm, r.n)};
  if (!subj.empty()) {
    // The harness's mmlu group: subjects pooled into categories, categories into mmlu, each mean
    // weighted by size (so the headline is the mean over all questions).
    std::map<std::string, std::vector<std::pair<int64_t, double>>> cat_parts;
    std::map<std::string, Sum> cat;
    for (const auto& [s, v] : subj) {
      auto& g = r.subjects[s];
      g.n = v.n;
      g.acc = {v.acc / double(v.n), mean_stderr(v.acc, v.acc, v.n)};
      const std::string c = mmlu_category(s);
      cat_parts[c].push_back({v.n, g.acc.stderr_});
      cat[c].n += v.n;
      cat[c].acc += v.acc;
    }
    std::vector<std::pair<int64_t, double>> top;
    for (const auto& [c, v] : cat) {
      auto& g = r.categories[c];
      g.n = v.n;
      g.acc = {v.acc / double(v.n), pooled_stderr(cat_parts[c])};
      top.push_back({v.n, g.acc.stderr_});
    }
    r.acc.stderr_ = pooled_stderr(top);
  }
  return r;
}

nlohmann::json TaskResult::to_json() const {
  nlohmann::json j = {{"task", task},
                      {"source", source},
                      {"n", n},
                      {"limit", limit > 0 ? nlohmann::json(limit) : nlohmann::json(nullptr)},
                      {"fewshot", fewshot},
                      {"acc", acc.value},
                      {"acc_stderr", number_or_null(acc.stderr_)},
                      {"headline_metric", headline_metric()},
                      {"headline", headline()},
                      {"tokens_forwarded", stats.tokens_forwarded},
                      {"tokens_requested", stats.tokens_requested},
                      {"seconds", stats.seconds},
                      {"tokens_per_second", double(stats.tokens_forwarded) / std::max(stats.seconds, 1e-9)}};
  if (reports_acc_norm) {
    j["acc_norm"] = acc_norm.value;
    j["acc_norm_stderr"] = number_or_null(acc_norm.stderr_);
  }
  auto groups = [](const std::map<std::string, Group>& m) {
    nlohmann::json o = nlohmann::json::object();
    for (const auto& [k, g] : m) o[k] = {{"n", g.n}, {"acc", g.acc.value}, {"acc_stderr", number_or_null(g.acc.stderr_)}};
    return o;
  };
  if (!categories.empty()) j["categories"] = groups(categories);
  if (!subjects.empty()) j["subjects"] = groups(subjects);
  return j;
}

nlohmann::json item_records(const Task& task, const TaskResult& r) {
  nlohmann::json lines = nlohmann::json::array();
  for (size_t i = 0; i < task.items.size(); ++i) {
    const auto& it = task.items[i];
    const auto& res = r.items.at(i);
    nlohmann::json lens = nlohmann::json::array();
    for (const auto& c : it.choices) lens.push_back(utf8_length(c));
    lines.push_back({{"task", task.name},
                     {"subject", it.subject},
                     {"doc_index", it.doc_index},
                     {"id", it.id},
                     {"label", it.label},
                     {"ll", res.ll},
                     {"is_greedy", res.greedy},
                     {"choice_len", lens},
                     {"pred", res.pred},
                     {"pred_norm", res.pred_norm}});
  }
  return lines;
}

}  // namespace toga
