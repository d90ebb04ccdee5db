// toga eval ppl | kld: perplexity and KL divergence against a base model over the same windows.
#include <cstdio>
#include <fstream>

#include "cli/commands.h"
#include "cli/common.h"
#include "eval/perplexity.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace toga::cli {

namespace {

struct WindowFlags {
  std::string dataset = "wikitext2";
  int seqlen = 2048;
  int max_windows = 0;
  std::string json;
  bool force = false;
};

void add_window_flags(CLI::App* cmd, WindowFlags& w) {
  cmd->add_option("--dataset,-d", w.dataset,
                  "wikitext2 (test, GPTQ protocol), wikitext2-valid, c4, tinystories, or a text file")
      ->capture_default_str();
  cmd->add_option("--seqlen", w.seqlen, "window length, capped by the model's context")->capture_default_str();
  cmd->add_option("--max-windows", w.max_windows, "evaluate only the first N windows (0 = all)");
  cmd->add_option("--json", w.json, "write the result as JSON here (a new file)");
  cmd->add_flag("--force", w.force, "replace an existing --json file");
}

WindowOptions window_options(const WindowFlags& w, const ModelConfig& c, const std::string& dataset_name) {
  WindowOptions opts;
  opts.seqlen = std::min(w.seqlen, c.max_position_embeddings);
  opts.max_windows = w.max_windows;
  // GPTQ's C4 protocol scores the first 256 windows only.
  if (dataset_name.rfind("c4", 0) == 0 && opts.max_windows == 0) opts.max_windows = 256;
  if (opts.seqlen != w.seqlen)
    std::fprintf(stderr, "seqlen %d capped to the model's context %d\n", w.seqlen, opts.seqlen);
  return opts;
}

}  // namespace

void register_eval(CLI::App& app) {
  auto* eval = app.add_subcommand("eval", "measure quality: perplexity, KL divergence, zero-shot tasks");
  eval->require_subcommand(1);
  register_eval_tasks(eval);

  {
    auto* cmd = eval->add_subcommand("ppl", "perplexity over non-overlapping windows (GPTQ protocol)");
    struct Opts {
      CommonOptions common;
      WindowFlags w;
      std::string model, engine = "auto";
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("model", o->model, "model: HF directory, .gguf file, llama2.c .bin")->required();
    add_window_flags(cmd, o->w);
    add_engine_option(cmd, o->engine);
    add_common_options(cmd, o->common);
    cmd->callback([o] {
      apply_common_options(o->common);
      check_output_paths(o->w.force, {}, {o->w.json});
      auto lm = load_model_and_tokenizer(o->model, o->common);
      const auto text = load_eval_text(o->w.dataset);
      const auto tokens = tokenize_for_eval(*lm.tokenizer, text.text);
      const auto opts = window_options(o->w, lm.model.config, text.name);
      const auto runtime = choose_engine(lm.model, o->common, o->engine, "ppl");
      const auto r = runtime ? perplexity(*runtime, tokens, opts) : perplexity(lm.model, tokens, opts);
      std::printf("| model | data | seqlen | windows | tokens | ppl | tok/s |\n|---|---|---|---|---|---|---|\n");
      std::printf("| %s | %s | %lld | %lld | %lld | %.4f | %.0f |\n", o->model.c_str(), text.name.c_str(),
                  (long long)r.seqlen, (long long)r.windows, (long long)r.tokens_total, r.ppl, r.tokens_per_second);
      if (!o->w.json.empty()) {
        nlohmann::json j = {{"metric", "perplexity"},
                            {"model", o->model},
                            {"data", {{"name", text.name}, {"path", text.path}, {"protocol", text.protocol}}},
                            {"result", r.to_json()},
                            {"run", run_info(o->common, &lm.model)}};
        j["run"]["engine"] = runtime ? "runtime" : "libtorch";
        write_json(o->w.json, j, o->w.force);
      }
    });
  }

  {
    auto* cmd = eval->add_subcommand("logits", "write a text's token ids and full logits, for cross-checks");
    struct Opts {
      CommonOptions common;
      std::string model, text, out;
      bool special = false, force = false;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("model", o->model, "model: HF directory, .gguf file, llama2.c .bin")->required();
    cmd->add_option("--text", o->text, "the text (tokenized as for evaluation: BOS if the model adds one)")->required();
    cmd->add_option("--out", o->out, "writes OUT.json (ids, shape) and OUT.f32 (float32 logits, row-major)")->required();
    cmd->add_flag("--special", o->special, "parse control tokens written in the text");
    cmd->add_flag("--force", o->force, "replace existing OUT.json and OUT.f32 files");
    add_common_options(cmd, o->common);
    cmd->callback([o] {
      apply_common_options(o->common);
      const OnExisting on_existing = o->force ? OnExisting::kReplace : OnExisting::kRefuse;
      check_output_paths(o->force, {}, {o->out + ".f32", o->out + ".json"});
      auto lm = load_model_and_tokenizer(o->model, o->common);
      std::vector<int> ids = lm.tokenizer->encode(o->text, o->special);
      if (lm.tokenizer->add_bos && lm.tokenizer->bos_id >= 0) ids.insert(ids.begin(), lm.tokenizer->bos_id);
      if (ids.empty()) fail("--text gives no tokens");
      std::vector<int64_t> ids64(ids.begin(), ids.end());
      torch::NoGradGuard ng;
      const auto logits = lm.model.forward(torch::tensor(ids64).unsqueeze(0))[0].to(torch::kFloat32).contiguous();
      write_file_atomically(o->out + ".f32", on_existing, [&](const std::string& tmp) {
        std::ofstream f(tmp, std::ios::binary);
        f.write(reinterpret_cast<const char*>(logits.data_ptr<float>()), logits.numel() * sizeof(float));
        if (!f) fail_file(tmp, "write failed");
      });
      write_json(o->out + ".json", {{"model", o->model}, {"text", o->text}, {"ids", ids},
                                    {"shape", {logits.size(0), logits.size(1)}}, {"run", run_info(o->common)}},
                 o->force);
    });
  }

  {
    auto* cmd = eval->add_subcommand("kld", "KL divergence of a model's next-token distribution from a base model's");
    struct Opts {
      CommonOptions common;
      WindowFlags w;
      std::string model, base;
      int base_kv_bits = 0;
      std::string protocol = "all-positions", engine = "auto";
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("model", o->model, "the model to measure")->required();
    cmd->add_option("--protocol", o->protocol,
                    "all-positions: every predicted position of each window; llama.cpp: windows of 512 (unless "
                    "--seqlen), only their second half scored, as llama-perplexity --kl-divergence")
        ->check(CLI::IsMember({"all-positions", "llama.cpp"}))
        ->capture_default_str();
    add_engine_option(cmd, o->engine);
    cmd->add_option("--base", o->base, "the reference model (e.g. the uncompressed checkpoint)")->required();
    cmd->add_option("--base-kv-bits", o->base_kv_bits,
                    "KV-cache bits of the base (default: as its checkpoint says; --kv-bits applies to the model only)");
    add_window_flags(cmd, o->w);
    add_common_options(cmd, o->common);
    cmd->callback([o] {
      apply_common_options(o->common);
      check_output_paths(o->w.force, {}, {o->w.json});
      if (o->protocol == "llama.cpp" && o->w.seqlen == WindowFlags().seqlen) o->w.seqlen = 512;
      // The reference stays as its checkpoint says: a KV4 model is measured against the FP model.
      CommonOptions base_common = o->common;
      base_common.kv_bits = o->base_kv_bits;
      auto base = load_model_and_tokenizer(o->base, base_common);
      auto lm = load_model_and_tokenizer(o->model, o->common, /*need_tokenizer=*/false);
      const auto text = load_eval_text(o->w.dataset);
      const auto tokens = tokenize_for_eval(*base.tokenizer, text.text);
      auto opts = window_options(o->w, base.model.config, text.name);
      if (o->protocol == "llama.cpp") opts.score_from = opts.seqlen / 2;
      // Both models on the runtime forward, or both on libtorch.
      auto base_rt = choose_engine(base.model, base_common, o->engine, "kld");
      auto model_rt = base_rt ? choose_engine(lm.model, o->common, o->engine, "kld") : nullptr;
      const bool runtime = base_rt && model_rt;
      const auto r = runtime ? kl_divergence(*base_rt, *model_rt, tokens, opts) : kl_divergence(base.model, lm.model, tokens, opts);
      std::printf("| model | base | data | windows | mean KLD | median KLD | p99 KLD | top-1 agree | ppl | base ppl |\n"
                  "|---|---|---|---|---|---|---|---|---|---|\n");
      std::printf("| %s | %s | %s | %lld | %.6f | %.6f | %.6f | %.2f%% | %.4f | %.4f |\n", o->model.c_str(),
                  o->base.c_str(), text.name.c_str(), (long long)r.windows, r.mean_kld, r.median_kld, r.p99_kld,
                  100.0 * r.top1_agreement, r.model_ppl, r.base_ppl);
      if (!o->w.json.empty()) {
        nlohmann::json j = {{"metric", "kl_divergence"},
                            {"model", o->model},
                            {"base", o->base},
                            {"kv_bits", o->common.kv_bits},
                            {"base_kv_bits", o->base_kv_bits},
                            {"protocol", o->protocol},
                            {"data", {{"name", text.name}, {"path", text.path}, {"protocol", text.protocol}}},
                            {"result", r.to_json()},
                            {"run", run_info(o->common, &lm.model)}};
        j["run"]["engine"] = runtime ? "runtime" : "libtorch";
        write_json(o->w.json, j, o->w.force);
      }
    });
  }
}

}  // namespace toga::cli
