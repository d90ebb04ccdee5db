// Forward throughput of Model::forward at real shapes, next to the machine's own ceilings measured
// in the same process and thread count:
//   peak/matmul   a 4096^3 torch::matmul (fp32 sgemm, bf16) - the compute roofline
//   peak/stream   torch::sum over 1 GiB of fp32 - the streaming read bandwidth
//   gemv          one decode-step linear (1 x 2048 by 2048 x 8192) via torch::linear and torch::mv
//   prefill       batch 1, one Model::forward over seqlen tokens (no KV cache)
//   decode        1-token steps with a KV cache holding 512 positions
// Models: Llama-3.2-1B with random weights at its published shapes (generated while loading, through
// load_model), and the real SmolLM2-135M-Instruct Q4_1 GGUF dequantized by load_model.
//
// FLOPs (bench_models.h forward_flops): 2 x matmul parameters x tokens for every linear including
// lm_head, plus per layer 2 x 2 x heads x head_dim x (causally visible keys). Counters are computed
// from wall time measured here, so they mean the same whatever the library's rate conventions.
//
// Run through bench/run_benchmarks.sh, which sets OMP_WAIT_POLICY=passive and
// ATEN_CPU_CAPABILITY=avx512 as the CLI does and renders the markdown tables. Environment:
//   TOGA_BENCH_THREADS  comma list of thread counts (default "1,2")
//   TOGA_BENCH_ITERS    timed forwards per prefill case (default 2; one untimed warm-up before)
//   TOGA_SHARED         shared data directory (default ../shared)
#include <benchmark/benchmark.h>
#include <fmt/format.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <time.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "bench_models.h"
#include "io/checkpoint.h"
#include "model/model.h"
#include "model/threads.h"

namespace {

using toga::ModelConfig;
using Clock = std::chrono::steady_clock;

enum class Which { Llama32_1B, SmolLM2_135M };

const char* model_name(Which w) { return w == Which::Llama32_1B ? "llama3.2-1b" : "smollm2-135m"; }

// One model resident at a time: benchmarks are registered grouped by model and dtype, so each is
// loaded once, and the fp32 1B model (5 GB) is freed before the next is built.
struct Resident {
  std::string key;
  std::unique_ptr<toga::Model> model;
};
Resident& resident() {
  static Resident r;
  return r;
}

toga::Model* get_model(Which w, torch::Dtype dtype, std::string* error) {
  Resident& r = resident();
  const std::string key = std::string(model_name(w)) + "/" + toga::dtype_string(dtype);
  if (r.key == key) return r.model.get();
  r.model.reset();
  r.key.clear();
  toga::set_threads(0);
  toga::LoadOptions opts;
  opts.dtype = dtype;
  try {
    if (w == Which::Llama32_1B) {
      toga::Checkpoint ck;
      ck.path = "<random>";
      ck.format = "random";
      ck.config = toga::bench::llama32_1b_config();
      ck.tensors = std::make_unique<toga::bench::RandomTensorSource>(ck.config);
      r.model = std::make_unique<toga::Model>(toga::load_model(ck, opts));
    } else {
      const toga::Checkpoint ck = toga::open_checkpoint(toga::bench::smollm2_path());
      r.model = std::make_unique<toga::Model>(toga::load_model(ck, opts));
    }
  } catch (const std::exception& e) {
    *error = e.what();
    return nullptr;
  }
  r.key = key;
  return r.model.get();
}

torch::Tensor token_ids(const ModelConfig& c, int64_t n, uint64_t seed) {
  std::vector<int64_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int64_t>(toga::bench::mix64(seed + i) % c.vocab_size);
  return torch::tensor(ids, torch::kLong).unsqueeze(0);
}

double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// Wall and process CPU time of the timed region. CPU time / (wall x threads) is the share of its
// cores the benchmark actually got: below 1 the other jobs on the machine took the rest.
struct Timer {
  double wall = 0, cpu = 0;
  Clock::time_point w0;
  double c0 = 0;
  void start() {
    w0 = Clock::now();
    c0 = process_cpu_seconds();
  }
  void stop() {
    wall += std::chrono::duration<double>(Clock::now() - w0).count();
    cpu += process_cpu_seconds() - c0;
  }
};

double element_bytes(torch::Dtype d) { return d == torch::kFloat32 ? 4.0 : 2.0; }

void set_common_counters(benchmark::State& state, int threads, double load_before, const Timer& timer) {
  state.counters["threads"] = threads;
  state.counters["cpu_share"] = timer.cpu / (timer.wall * threads);
  state.counters["load1_before"] = load_before;
  state.counters["load1_after"] = toga::bench::load_average();
}

void BM_MatmulPeak(benchmark::State& state, torch::Dtype dtype, int64_t n, int threads) {
  toga::set_threads(threads);
  const double load = toga::bench::load_average();
  torch::NoGradGuard ng;
  torch::manual_seed(0);
  const auto a = torch::randn({n, n}).to(dtype), b = torch::randn({n, n}).to(dtype);
  benchmark::DoNotOptimize(torch::matmul(a, b));  // warm-up: thread pool, packing buffers
  Timer timer;
  int64_t iters = 0;
  for (auto _ : state) {
    timer.start();
    auto c = torch::matmul(a, b);
    benchmark::DoNotOptimize(c.data_ptr());
    timer.stop();
    ++iters;
  }
  const double flops = 2.0 * double(n) * double(n) * double(n);
  state.counters["GFLOP/s"] = flops * iters / timer.wall / 1e9;
  set_common_counters(state, threads, load, timer);
}

void BM_StreamRead(benchmark::State& state, int threads) {
  toga::set_threads(threads);
  const double load = toga::bench::load_average();
  torch::NoGradGuard ng;
  const int64_t n = int64_t(1) << 28;  // 1 GiB of fp32: 32x the L3 cache
  const auto x = torch::ones({n}, torch::kFloat32);
  benchmark::DoNotOptimize(x.sum().item<float>());
  Timer timer;
  int64_t iters = 0;
  for (auto _ : state) {
    timer.start();
    benchmark::DoNotOptimize(x.sum().item<float>());
    timer.stop();
    ++iters;
  }
  state.counters["GB/s"] = double(n) * 4.0 * iters / timer.wall / 1e9;
  set_common_counters(state, threads, load, timer);
}

// One decode-step linear layer (a 1-row input against an MLP weight), through torch::linear as
// LinearSite::forward calls it and through torch::mv: the BLAS behind each decides how close a
// decode step gets to the streaming bandwidth.
void BM_DecodeLinear(benchmark::State& state, torch::Dtype dtype, bool mv, int threads) {
  toga::set_threads(threads);
  const double load = toga::bench::load_average();
  torch::NoGradGuard ng;
  torch::manual_seed(0);
  const int64_t out = 8192, in = 2048;
  const auto w = torch::randn({out, in}).to(dtype), x = torch::randn({1, 1, in}).to(dtype);
  auto run = [&] { return mv ? torch::mv(w, x.view({in})) : torch::linear(x, w); };
  benchmark::DoNotOptimize(run().data_ptr());
  Timer timer;
  int64_t iters = 0;
  for (auto _ : state) {
    timer.start();
    benchmark::DoNotOptimize(run().data_ptr());
    timer.stop();
    ++iters;
  }
  state.counters["GB/s"] = double(out * in) * element_bytes(dtype) * iters / timer.wall / 1e9;
  set_common_counters(state, threads, load, timer);
}

// The benchmark's model, or nullptr after marking the case skipped (e.g. the shared data is absent).
toga::Model* model_or_skip(benchmark::State& state, Which w, torch::Dtype dtype) {
  std::string error;
  toga::Model* m = get_model(w, dtype, &error);
  if (!m) {
    state.SkipWithError(error.c_str());
    for (auto _ : state) {
    }
  }
  return m;
}

void BM_Prefill(benchmark::State& state, Which w, torch::Dtype dtype, int64_t seqlen, int threads) {
  toga::Model* m = model_or_skip(state, w, dtype);
  if (!m) return;
  toga::set_threads(threads);
  const double load = toga::bench::load_average();
  torch::NoGradGuard ng;
  const auto ids = token_ids(m->config, seqlen, 7);
  benchmark::DoNotOptimize(m->forward(ids).data_ptr());  // warm-up: the allocator's first page faults
  Timer timer;
  int64_t iters = 0;
  for (auto _ : state) {
    timer.start();
    auto logits = m->forward(ids);
    benchmark::DoNotOptimize(logits.data_ptr());
    timer.stop();
    ++iters;
  }
  const double flops = toga::bench::forward_flops(m->config, 0, seqlen);
  state.counters["tokens/s"] = double(seqlen) * iters / timer.wall;
  state.counters["GFLOP/s"] = flops * iters / timer.wall / 1e9;
  state.counters["GFLOP"] = flops / 1e9;
  state.counters["tokens"] = double(seqlen);
  set_common_counters(state, threads, load, timer);
}

// The cache is filled with random keys and values instead of a prefill: a decode step costs the
// same whatever they hold, and this spares minutes of single-thread prefill per case.
void BM_Decode(benchmark::State& state, Which w, torch::Dtype dtype, int64_t context, int64_t steps, int threads) {
  toga::Model* m = model_or_skip(state, w, dtype);
  if (!m) return;
  toga::set_threads(threads);
  const double load = toga::bench::load_average();
  torch::NoGradGuard ng;
  const ModelConfig& c = m->config;
  toga::KVCache cache;
  torch::manual_seed(3);
  const int64_t capacity = context + steps + 1;  // never reallocated while timed
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    cache.k.push_back(torch::randn({1, c.num_key_value_heads, capacity, c.head_dim}).to(dtype));
    cache.v.push_back(torch::randn({1, c.num_key_value_heads, capacity, c.head_dim}).to(dtype));
  }
  const auto ids = token_ids(c, steps + 1, 11);
  auto step = [&](int64_t i) {
    auto logits = m->forward(ids.narrow(1, i, 1), &cache);
    benchmark::DoNotOptimize(logits.data_ptr());
  };
  cache.length = context;
  step(steps);  // warm-up
  Timer timer;
  int64_t iters = 0;
  for (auto _ : state) {
    cache.truncate(context);
    timer.start();
    for (int64_t i = 0; i < steps; ++i) step(i);
    timer.stop();
    ++iters;
  }
  // Steps run at contexts context .. context + steps - 1.
  const double flops = toga::bench::forward_flops(c, context, steps);
  // What one step must stream from memory: every linear weight once, and the cached keys and values.
  const double weight_bytes = toga::bench::linear_params(c) * element_bytes(dtype);
  const double kv_bytes = 2.0 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim *
                          (double(context) + (steps - 1) / 2.0) * element_bytes(dtype);
  const double per_step = timer.wall / double(iters * steps);
  state.counters["tokens/s"] = 1.0 / per_step;
  state.counters["GFLOP/s"] = flops / double(steps) / per_step / 1e9;
  state.counters["GB/s"] = (weight_bytes + kv_bytes) / per_step / 1e9;
  state.counters["context"] = double(context);
  set_common_counters(state, threads, load, timer);
}

std::vector<int> thread_list() {
  const char* env = std::getenv("TOGA_BENCH_THREADS");
  std::stringstream ss(env ? env : "1,2");
  std::vector<int> out;
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(std::stoi(item));
  return out;
}

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : fallback;
}

const char* dtype_tag(torch::Dtype d) { return d == torch::kFloat32 ? "fp32" : "bf16"; }

void register_all() {
  const std::vector<int> threads = thread_list();
  const int iters = std::max(1, env_int("TOGA_BENCH_ITERS", 2));
  const std::vector<torch::Dtype> dtypes = {torch::kFloat32, torch::kBFloat16};
  for (auto d : dtypes)
    for (int t : threads)
      benchmark::RegisterBenchmark(fmt::format("peak/matmul4096/{}/threads:{}", dtype_tag(d), t).c_str(),
                                   BM_MatmulPeak, d, int64_t(4096), t)
          ->Iterations(3)->Unit(benchmark::kMillisecond)->UseRealTime();
  for (int t : threads)
    benchmark::RegisterBenchmark(fmt::format("peak/stream_read_1GiB/threads:{}", t).c_str(), BM_StreamRead, t)
        ->Iterations(10)->Unit(benchmark::kMillisecond)->UseRealTime();
  for (auto d : dtypes)
    for (bool mv : {false, true})
      for (int t : threads)
        benchmark::RegisterBenchmark(
            fmt::format("gemv/{}/{}/8192x2048/threads:{}", dtype_tag(d), mv ? "mv" : "linear", t).c_str(),
            BM_DecodeLinear, d, mv, t)
            ->Iterations(20)->Unit(benchmark::kMillisecond)->UseRealTime();
  struct Case {
    Which w;
    int64_t seqlen;
  };
  for (Case cs : {Case{Which::Llama32_1B, 512}, Case{Which::SmolLM2_135M, 2048}}) {
    for (auto d : dtypes) {
      for (int t : threads)
        benchmark::RegisterBenchmark(
            fmt::format("prefill/{}/{}/seq{}/threads:{}", model_name(cs.w), dtype_tag(d), cs.seqlen, t).c_str(),
            BM_Prefill, cs.w, d, cs.seqlen, t)
            ->Iterations(iters)->Unit(benchmark::kMillisecond)->UseRealTime();
      const int64_t steps = cs.w == Which::Llama32_1B ? 8 : 32;
      for (int t : threads)
        benchmark::RegisterBenchmark(
            fmt::format("decode/{}/{}/ctx512/threads:{}", model_name(cs.w), dtype_tag(d), t).c_str(), BM_Decode,
            cs.w, d, int64_t(512), steps, t)
            ->Iterations(2)->Unit(benchmark::kMillisecond)->UseRealTime();
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  toga::bench::use_cli_allocator_settings();
  const char* cap = std::getenv("ATEN_CPU_CAPABILITY");
  const char* wait = std::getenv("OMP_WAIT_POLICY");
  benchmark::AddCustomContext("ATEN_CPU_CAPABILITY", cap ? cap : "(default)");
  benchmark::AddCustomContext("OMP_WAIT_POLICY", wait ? wait : "(default: active)");
  benchmark::AddCustomContext("torch",
                              fmt::format("{}.{}.{}", TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR, TORCH_VERSION_PATCH));
  benchmark::AddCustomContext("available_cores", std::to_string(toga::available_cores()));
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
