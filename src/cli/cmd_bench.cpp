// toga bench: llama-bench's measurement for one model — prompt processing (pp: P tokens in one
// forward from an empty cache) and text generation (tg: N tokens one at a time from an empty cache),
// each repeated R times, tokens/s as mean ± sd — on the runtime forward (packed kernels, no
// libtorch) or the libtorch forward; --profile adds the seconds per operator of one pp and one tg run.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>

#include "cli/commands.h"
#include "cli/common.h"
#include "model/runtime_export.h"
#include "runtime/cpu.h"
#include "util/error.h"

namespace toga::cli {

namespace {

using Clock = std::chrono::steady_clock;

struct Result {
  std::string test;
  std::vector<double> tokens_per_second;
  double mean() const {
    double s = 0;
    for (double v : tokens_per_second) s += v;
    return s / double(tokens_per_second.size());
  }
  double sd() const {
    if (tokens_per_second.size() < 2) return 0;
    double m = mean(), s = 0;
    for (double v : tokens_per_second) s += (v - m) * (v - m);
    return std::sqrt(s / double(tokens_per_second.size() - 1));
  }
};

// One engine, as the benchmark drives it: a fresh sequence, then tokens appended.
struct Engine {
  std::function<void()> reset;
  std::function<void(const std::vector<int32_t>&)> run;
};

nlohmann::json profile_json(const rt::OpProfile& p) {
  nlohmann::json j = nlohmann::json::object();
  for (int i = 0; i < rt::OpProfile::kOps; ++i) j[rt::OpProfile::kNames[i]] = p.seconds[i];
  return j;
}

void print_profile(const char* what, const rt::OpProfile& p) {
  double total = 0;
  for (double s : p.seconds) total += s;
  std::printf("\nprofile of one %s (%lld forward calls, %.3f s):\n| operator | ms | share |\n|---|---:|---:|\n", what,
              (long long)p.calls, total);
  for (int i = 0; i < rt::OpProfile::kOps; ++i)
    std::printf("| %s | %.3f | %.1f %% |\n", rt::OpProfile::kNames[i], 1e3 * p.seconds[i], 100 * p.seconds[i] / total);
}

}  // namespace

void register_bench(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "prefill and decode speed (llama-bench's pp / tg tests)");
  struct Opts {
    CommonOptions common;
    std::string model, engine = "runtime", json;
    int prompt = 512, generate = 128, reps = 3;
    bool profile = false, force = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("model", o->model, "model: HF directory (plain or quantized), .gguf file or llama2.c .bin")->required();
  cmd->add_option("-p,--n-prompt", o->prompt, "prompt tokens of the pp test (0 = skip)")->capture_default_str();
  cmd->add_option("-n,--n-gen", o->generate, "generated tokens of the tg test (0 = skip)")->capture_default_str();
  cmd->add_option("-r,--repetitions", o->reps, "repetitions of each test")->capture_default_str();
  cmd->add_option("--engine", o->engine, "runtime (libtorch-free, packed kernels) or torch")
      ->check(CLI::IsMember({"runtime", "torch"}))
      ->capture_default_str();
  cmd->add_flag("--profile", o->profile, "seconds per operator of one pp and one tg run (runtime engine)");
  cmd->add_option("--json", o->json, "write the results as JSON here (a new file)");
  cmd->add_flag("--force", o->force, "replace an existing --json file");
  add_common_options(cmd, o->common);
  cmd->callback([o] {
    apply_common_options(o->common);
    if (o->reps < 1 || o->prompt < 0 || o->generate < 0) fail("bench: -r must be ≥ 1, -p and -n ≥ 0");
    check_output_paths(o->force, {}, {o->json});
    auto lm = load_model_and_tokenizer(o->model, o->common, /*need_tokenizer=*/false);
    const int64_t vocab = lm.model.embed.size(0);
    std::mt19937 rng(1234);  // the same token ids every run: speed does not depend on them, but keep it fixed
    std::uniform_int_distribution<int32_t> token(0, int32_t(vocab - 1));
    std::vector<int32_t> ids(size_t(std::max(o->prompt, o->generate)));
    for (auto& t : ids) t = token(rng);

    Engine engine;
    std::shared_ptr<const rt::Transformer> runtime;
    std::unique_ptr<rt::Session> session;
    std::vector<float> logits;
    torch::NoGradGuard no_grad;
    KVCache cache;
    std::string kernels;
    int64_t bytes = 0;
    if (o->engine == "runtime") {
      if (o->common.dtype != "fp32") fail("bench: the runtime forward computes in fp32 (leave --dtype, or use --engine torch)");
      runtime = export_runtime(lm.model, {o->common.lm_head});
      session = std::make_unique<rt::Session>(*runtime, int64_t(ids.size()) + 1);
      logits.resize(size_t(vocab));
      engine = {[&] { session->reset(); },
                [&](const std::vector<int32_t>& t) { session->forward(t.data(), int64_t(t.size()), logits.data(), false); }};
      bytes = runtime->linear_bytes();
      kernels = runtime->blocks.empty() ? "" : runtime->blocks[0].q.kernel_name();
    } else {
      engine = {[&] { cache.clear(); },
                [&](const std::vector<int32_t>& t) {
                  std::vector<int64_t> v(t.begin(), t.end());
                  const auto y = lm.model.forward(torch::tensor(v, torch::kLong).unsqueeze(0), &cache);
                  // Only the last position's logits matter, as in generation.
                  (void)y[0][y.size(1) - 1].sum().item<float>();
                }};
      for (const auto& [name, t] : lm.model.named_tensors()) bytes += t.numel() * t.element_size();
      const LinearSite& q = lm.model.blocks.at(0).q;
      kernels = q.kernel ? q.kernel->name() : "dense";
    }
    std::vector<Result> results;
    rt::OpProfile pp_profile, tg_profile;
    auto timed = [&](const std::function<void()>& body) {
      const auto t0 = Clock::now();
      body();
      return std::chrono::duration<double>(Clock::now() - t0).count();
    };
    if (o->prompt > 0) {
      Result r{fmt::format("pp{}", o->prompt), {}};
      const std::vector<int32_t> prompt(ids.begin(), ids.begin() + o->prompt);
      engine.reset();
      engine.run(prompt);  // warm-up: page in the weights, size the buffers
      for (int i = 0; i < o->reps; ++i) {
        engine.reset();
        if (session && o->profile && i == 0) session->set_profile(&pp_profile);
        r.tokens_per_second.push_back(double(o->prompt) / timed([&] { engine.run(prompt); }));
        if (session) session->set_profile(nullptr);
      }
      results.push_back(r);
    }
    if (o->generate > 0) {
      Result r{fmt::format("tg{}", o->generate), {}};
      for (int i = 0; i < o->reps; ++i) {
        engine.reset();
        engine.run({ids[0]});  // warm-up token, outside the timing
        engine.reset();
        if (session && o->profile && i == 0) session->set_profile(&tg_profile);
        r.tokens_per_second.push_back(double(o->generate) / timed([&] {
          for (int k = 0; k < o->generate; ++k) engine.run({ids[size_t(k)]});
        }));
        if (session) session->set_profile(nullptr);
      }
      results.push_back(r);
    }

    const int threads = at::get_num_threads();
    std::printf("| model | engine | kernels | weights MiB | threads | test | t/s |\n|---|---|---|---:|---:|---|---:|\n");
    nlohmann::json jr = nlohmann::json::array();
    for (const Result& r : results) {
      std::printf("| %s | %s | %s | %.1f | %d | %s | %.2f ± %.2f |\n", o->model.c_str(), o->engine.c_str(), kernels.c_str(),
                  double(bytes) / (1 << 20), threads, r.test.c_str(), r.mean(), r.sd());
      jr.push_back({{"test", r.test}, {"tokens_per_second", r.tokens_per_second}, {"mean", r.mean()}, {"sd", r.sd()}});
    }
    if (o->profile && session) {
      if (o->prompt > 0) print_profile(("pp" + std::to_string(o->prompt)).c_str(), pp_profile);
      if (o->generate > 0) print_profile(("tg" + std::to_string(o->generate)).c_str(), tg_profile);
    }
    if (!o->json.empty()) {
      nlohmann::json j = {{"model", o->model},
                          {"engine", o->engine},
                          {"kernels", kernels},
                          {"lm_head", o->common.lm_head},
                          {"isa", rt::isa_name(rt::selected_isa())},
                          {"weight_bytes", bytes},
                          {"results", jr},
                          {"run", run_info(o->common, &lm.model)}};
      if (o->profile && session) j["profile"] = {{"pp", profile_json(pp_profile)}, {"tg", profile_json(tg_profile)}};
      write_json(o->json, j, o->force);
    }
  });
}

}  // namespace toga::cli
