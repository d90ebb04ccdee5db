// toga eval tasks: zero/few-shot multiple-choice accuracy (ARC, BoolQ, HellaSwag, WinoGrande, MMLU,
// or a JSONL file) scored as lm-evaluation-harness scores it, and side-by-side comparison of runs.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli/commands.h"
#include "cli/common.h"
#include "data/text.h"
#include "eval/tasks.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/progress.h"

namespace toga::cli {

namespace {

std::vector<std::string> split_tasks(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string t;
  while (std::getline(in, t, ',')) {
    if (t.empty()) continue;
    if (t == "all") {
      for (const auto& n : standard_task_names()) out.push_back(n);
    } else {
      out.push_back(t);
    }
  }
  if (out.empty()) fail("--tasks is empty");
  return out;
}

// Standard tasks in report order, then the others as they sort.
std::vector<std::string> ordered_names(const nlohmann::json& tasks) {
  std::vector<std::string> out;
  for (const auto& n : standard_task_names())
    if (tasks.contains(n)) out.push_back(n);
  for (const auto& [n, t] : tasks.items())
    if (std::find(out.begin(), out.end(), n) == out.end()) out.push_back(n);
  return out;
}

std::string pct(const nlohmann::json& v) {
  return v.is_number() ? fmt::format("{:.2f}", 100.0 * v.get<double>()) : std::string("-");
}

std::string pct_pm(const nlohmann::json& j, const char* metric) {
  if (!j.contains(metric)) return "-";
  const std::string se = std::string(metric) + "_stderr";
  if (j.contains(se) && j[se].is_number())
    return fmt::format("{:.2f} ± {:.2f}", 100.0 * j[metric].get<double>(), 100.0 * j[se].get<double>());
  return pct(j[metric]);
}

// The paper's Table 2 average: acc_norm where the harness reports it, acc otherwise.
nlohmann::json average_of(const nlohmann::json& tasks) {
  double sum = 0;
  nlohmann::json used = nlohmann::json::object();
  for (const auto& [name, t] : tasks.items()) {
    sum += t["headline"].get<double>();
    used[name] = t["headline_metric"];
  }
  bool six = tasks.size() == standard_task_names().size();
  for (const auto& n : standard_task_names()) six = six && tasks.contains(n);
  return {{"value", tasks.empty() ? 0.0 : sum / double(tasks.size())},
          {"tasks", tasks.size()},
          {"is_six_task_average", six},
          {"metric_per_task", used},
          {"rule", "acc_norm where the harness reports it (ARC-e, ARC-c, HellaSwag), acc otherwise"}};
}

void print_table(const nlohmann::json& j) {
  std::printf("\n| task | n | acc | acc_norm | reported | tok/s | time |\n|---|---|---|---|---|---|---|\n");
  for (const auto& name : ordered_names(j["tasks"])) {
    const auto& t = j["tasks"][name];
    std::printf("| %s | %lld | %s | %s | %s %s | %.0f | %s |\n", name.c_str(), (long long)t["n"].get<int64_t>(),
                pct_pm(t, "acc").c_str(), pct_pm(t, "acc_norm").c_str(), t["headline_metric"].get<std::string>().c_str(),
                pct(t["headline"]).c_str(), t["tokens_per_second"].get<double>(),
                format_duration(t["seconds"].get<double>()).c_str());
  }
  const auto& avg = j["average"];
  std::printf("| **average%s** | | | | %s | | |\n", avg["is_six_task_average"].get<bool>() ? " (6 tasks)" : "",
              pct(avg["value"]).c_str());
  if (j["tasks"].contains("mmlu") && j["tasks"]["mmlu"].contains("categories")) {
    std::printf("\n| mmlu category | n | acc |\n|---|---|---|\n");
    for (const auto& [c, g] : j["tasks"]["mmlu"]["categories"].items())
      std::printf("| %s | %lld | %s |\n", c.c_str(), (long long)g["n"].get<int64_t>(), pct_pm(g, "acc").c_str());
  }
}

nlohmann::json read_json(const std::string& path) {
  try {
    return nlohmann::json::parse(read_text(path));
  } catch (const nlohmann::json::exception& e) {
    fail_file(path, "not valid JSON ({})", e.what());
  }
}

void compare(const std::string& a_path, const std::string& b_path) {
  const auto a = read_json(a_path), b = read_json(b_path);
  for (const auto* j : {&a, &b})
    if (!j->contains("tasks")) fail_file(j == &a ? a_path : b_path, "not a `toga eval tasks --json` result");
  std::printf("A = %s (%s)\nB = %s (%s)\n\n| task | metric | A | B | B - A |\n|---|---|---|---|---|\n", a_path.c_str(),
              a.value("model", "?").c_str(), b_path.c_str(), b.value("model", "?").c_str());
  for (const auto& name : ordered_names(a["tasks"])) {
    const auto& ta = a["tasks"][name];
    if (!b["tasks"].contains(name)) {
      std::printf("| %s | | %s | (missing) | |\n", name.c_str(), pct(ta["headline"]).c_str());
      continue;
    }
    const auto& tb = b["tasks"][name];
    for (const char* m : {"acc", "acc_norm"}) {
      if (!ta.contains(m) || !tb.contains(m)) continue;
      const double va = ta[m].get<double>(), vb = tb[m].get<double>();
      const bool head = ta["headline_metric"] == m;
      std::printf("| %s | %s%s | %.2f | %.2f | %+.2f |\n", name.c_str(), m, head ? " *" : "", 100 * va, 100 * vb,
                  100 * (vb - va));
    }
    if (ta["n"] != tb["n"]) std::printf("| %s | n differs: %s vs %s | | | |\n", name.c_str(), ta["n"].dump().c_str(), tb["n"].dump().c_str());
  }
  for (const auto& [name, tb] : b["tasks"].items())
    if (!a["tasks"].contains(name)) std::printf("| %s | | (missing) | %s | |\n", name.c_str(), pct(tb["headline"]).c_str());
  // The average over the tasks both runs have, so that runs over different task sets still compare.
  double sa = 0, sb = 0;
  int common = 0;
  for (const auto& [name, ta] : a["tasks"].items())
    if (b["tasks"].contains(name)) {
      sa += ta["headline"].get<double>();
      sb += b["tasks"][name]["headline"].get<double>();
      ++common;
    }
  if (common > 0)
    std::printf("| **average of %d common task%s** | * metrics | %.2f | %.2f | %+.2f |\n", common, common == 1 ? "" : "s",
                100 * sa / common, 100 * sb / common, 100 * (sb - sa) / common);
  std::printf("\n* = the metric the average uses (acc_norm where the harness reports it, acc otherwise)\n");
}

}  // namespace

void register_eval_tasks(CLI::App* eval) {
  auto* cmd = eval->add_subcommand(
      "tasks", "zero/few-shot multiple-choice accuracy scored as lm-evaluation-harness does (docs/EVALUATION.md)");
  struct Opts {
    CommonOptions common;
    std::string model, tasks = "all", json, dump_items;
    std::vector<std::string> compare;
    int64_t limit = 0, batch_tokens = 8192;
    int fewshot = 0;
    uint64_t seed = 1234;
    bool force = false;
    std::string engine = "auto";
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("model", o->model, "model: HF directory, .gguf file, llama2.c .bin, quantized checkpoint");
  add_engine_option(cmd, o->engine);
  cmd->add_option("--tasks", o->tasks,
                  "comma-separated: arc_easy, arc_challenge, boolq, hellaswag, winogrande, mmlu, all, or "
                  "file:PATH (JSONL of {\"context\", \"choices\", \"label\"})")
      ->capture_default_str();
  cmd->add_option("--limit", o->limit, "score only the first N items of each task (per subject for MMLU)");
  cmd->add_option("--fewshot", o->fewshot, "examples in each context (MMLU: first k of dev)")->capture_default_str();
  cmd->add_option("--seed", o->seed, "few-shot sampling seed for tasks without a few-shot split")->capture_default_str();
  cmd->add_option("--json", o->json, "write results as JSON here (a new file)");
  cmd->add_option("--dump-items", o->dump_items, "write per-item log-likelihoods and predictions (JSONL) here");
  cmd->add_option("--batch-tokens", o->batch_tokens, "max padded tokens per forward batch (prefixes or suffix rows)")->capture_default_str();
  cmd->add_option("--compare", o->compare, "print two --json results side by side (A.json B.json) and exit")
      ->expected(2);
  cmd->add_flag("--force", o->force, "replace existing --json and --dump-items files");
  add_common_options(cmd, o->common);
  cmd->callback([o] {
    if (!o->compare.empty()) {
      compare(o->compare[0], o->compare[1]);
      return;
    }
    if (o->model.empty()) fail("eval tasks: give a model (or --compare A.json B.json)");
    apply_common_options(o->common);
    check_output_paths(o->force, {}, {o->json, o->dump_items});
    const auto names = split_tasks(o->tasks);
    // Before the model loads: a typo should not cost a model load.
    for (const auto& n : names)
      if (n.rfind("file:", 0) != 0 &&
          std::find(standard_task_names().begin(), standard_task_names().end(), n) == standard_task_names().end())
        fail("unknown task '{}' (use arc_easy, arc_challenge, boolq, hellaswag, winogrande, mmlu, all, or file:PATH)", n);
    std::string data_dir;
    for (const auto& n : names)
      if (n.rfind("file:", 0) != 0) {
        const std::string t = shared_data_path("tasks");
        data_dir = t.substr(0, t.size() - std::string("/tasks").size());
        break;
      }
    auto lm = load_model_and_tokenizer(o->model, o->common);
    const auto runtime = choose_engine(lm.model, o->common, o->engine, "tasks");
    TaskLoadOptions lo;
    lo.fewshot = o->fewshot;
    lo.seed = o->seed;
    lo.limit = o->limit;
    ScoreOptions so;
    so.batch_tokens = o->batch_tokens;

    nlohmann::json results = {{"metric", "zero_shot_tasks"},
                              {"model", o->model},
                              {"protocol", "lm-evaluation-harness multiple choice (docs/EVALUATION.md)"},
                              {"fewshot", o->fewshot},
                              {"seed", o->seed},
                              {"limit", o->limit > 0 ? nlohmann::json(o->limit) : nlohmann::json(nullptr)},
                              {"tasks", nlohmann::json::object()}};
    std::string dump;
    for (const auto& name : names) {
      const Task task = load_task(name, data_dir, lo);
      std::fprintf(stderr, "%s: %zu items from %s\n", task.name.c_str(), task.items.size(), task.source.c_str());
      TaskResult r = evaluate_task(lm.model, *lm.tokenizer, task, so, runtime.get());
      r.limit = o->limit;
      r.fewshot = o->fewshot;
      std::fprintf(stderr, "%s: acc %.4f%s\n", task.name.c_str(), r.acc.value,
                   task.reports_acc_norm ? fmt::format(" acc_norm {:.4f}", r.acc_norm.value).c_str() : "");
      results["tasks"][task.name] = r.to_json();
      if (!o->dump_items.empty())
        for (const auto& line : item_records(task, r)) dump += line.dump() + "\n";
    }
    results["average"] = average_of(results["tasks"]);
    results["run"] = run_info(o->common, &lm.model);
    results["run"]["engine"] = runtime ? "runtime" : "libtorch";
    print_table(results);
    if (!o->json.empty()) write_json(o->json, results, o->force);
    if (!o->dump_items.empty()) {
      write_text_atomically(o->dump_items, dump, o->force ? OnExisting::kReplace : OnExisting::kRefuse);
      std::fprintf(stderr, "wrote %s\n", o->dump_items.c_str());
    }
  });
}

}  // namespace toga::cli
