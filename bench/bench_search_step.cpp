// One TOGA-q search step (hypernetwork forward, Gumbel-Sigmoid masks, supernet forward with masked
// fake quantization of every block linear's weight and input, backward to the masks, AdamW) at real
// shapes, next to the same process's bf16 and fp32 4096³ matmul rates: the roofline a step is held
// against.
//
// FLOPs per step: 3 × the forward's (bench_models.h forward_flops: 2 × linear parameters × tokens
// plus attention): the backward computes the input gradients and, because every weight is a function
// of the masks, the weight gradients too. The elementwise fake quantization (several passes over
// every weight per step) is not counted: it is the overhead the ratio exposes.
//
// Models: SmolLM2-135M-Instruct (the shared GGUF) and Llama-3.2-1B shapes with random weights, at
// seqlen 512, batch 1, W4A4 + INT8 salient (the Atom recipe's quantizers).
// Environment: TOGA_BENCH_THREADS (default "2"), TOGA_SHARED.
#include <benchmark/benchmark.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <sstream>

#include "bench_models.h"
#include "io/checkpoint.h"
#include "model/model.h"
#include "model/threads.h"
#include "search/hypernet.h"
#include "search/budget.h"
#include "search/supernet.h"

namespace {

using Clock = std::chrono::steady_clock;
double g_bf16_peak = 0;

void BM_MatmulPeak(benchmark::State& state, torch::Dtype dtype, int threads) {
  toga::set_threads(threads);
  torch::NoGradGuard ng;
  const int64_t n = 4096;
  const auto a = torch::randn({n, n}).to(dtype), b = torch::randn({n, n}).to(dtype);
  benchmark::DoNotOptimize(torch::matmul(a, b));
  double wall = 0;
  int64_t iters = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    auto c = torch::matmul(a, b);
    benchmark::DoNotOptimize(c.data_ptr());
    wall += std::chrono::duration<double>(Clock::now() - t0).count();
    ++iters;
  }
  const double rate = 2.0 * n * n * n * iters / wall / 1e9;
  state.counters["GFLOP/s"] = rate;
  if (dtype == torch::kBFloat16) g_bf16_peak = rate;
}

void BM_SearchStep(benchmark::State& state, bool llama1b, int threads) {
  toga::set_threads(threads);
  toga::LoadOptions opts;
  opts.dtype = torch::kBFloat16;
  std::unique_ptr<toga::Model> m;
  try {
    if (llama1b) {
      toga::Checkpoint ck;
      ck.path = "<random>";
      ck.format = "random";
      ck.config = toga::bench::llama32_1b_config();
      ck.tensors = std::make_unique<toga::bench::RandomTensorSource>(ck.config);
      m = std::make_unique<toga::Model>(toga::load_model(ck, opts));
    } else {
      m = std::make_unique<toga::Model>(toga::load_model(toga::open_checkpoint(toga::bench::smollm2_path()), opts));
    }
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  const int64_t T = 512;
  std::vector<int64_t> v(T);
  for (int64_t i = 0; i < T; ++i) v[i] = int64_t(toga::bench::mix64(i) % m->config.vocab_size);
  const auto ids = torch::tensor(v, torch::kLong).unsqueeze(0);
  auto groups = toga::quant_mask_groups(*m);
  toga::compute_channel_orders(*m, groups, ids);
  toga::SupernetQuantizers q;
  q.weight_low = {4, true, 128, 0.85};
  q.act_low = {4, true, 128, 0.9};
  q.act_high = {8, true, 0};
  toga::Supernet net(*m, groups, q);
  toga::Hypernet hyper(groups, toga::fixed_fraction_masks(groups, 0.125));
  torch::optim::AdamW opt(hyper->parameters(), torch::optim::AdamWOptions(1e-3));
  auto step = [&](uint64_t seed) {
    const auto masks = toga::sample_masks(hyper->forward(), {0.5, true, true, seed});
    net.set_masks(masks);
    const auto logits = m->forward(ids).narrow(1, 0, T - 1).to(torch::kFloat32);
    const auto loss = torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}),
                                                           ids.narrow(1, 1, T - 1).reshape({-1})) +
                      torch::abs(torch::log(toga::weight_bits(groups, masks, q) / 4.5)).to(torch::kFloat32);
    opt.zero_grad();
    loss.backward();
    opt.step();
  };
  step(0);  // warm-up
  double wall = 0;
  int64_t iters = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    step(uint64_t(iters + 1));
    wall += std::chrono::duration<double>(Clock::now() - t0).count();
    ++iters;
  }
  const double flops = 3.0 * toga::bench::forward_flops(m->config, 0, T);
  state.counters["tokens/s"] = double(T) * iters / wall;
  state.counters["GFLOP/s"] = flops * iters / wall / 1e9;
  state.counters["bf16_peak_GFLOP/s"] = g_bf16_peak;
  if (g_bf16_peak > 0) state.counters["of_bf16_peak"] = flops * iters / wall / 1e9 / g_bf16_peak;
}

}  // namespace

int main(int argc, char** argv) {
  toga::bench::use_cli_allocator_settings();
  const char* env = std::getenv("TOGA_BENCH_THREADS");
  const int threads = env ? std::atoi(env) : 2;
  benchmark::RegisterBenchmark(fmt::format("peak/matmul4096/fp32/threads:{}", threads).c_str(), BM_MatmulPeak,
                               torch::kFloat32, threads)->Iterations(3)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark(fmt::format("peak/matmul4096/bf16/threads:{}", threads).c_str(), BM_MatmulPeak,
                               torch::kBFloat16, threads)->Iterations(3)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark(fmt::format("search_step/smollm2-135m/bf16/seq512/threads:{}", threads).c_str(),
                               BM_SearchStep, false, threads)->Iterations(3)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark(fmt::format("search_step/llama3.2-1b/bf16/seq512/threads:{}", threads).c_str(),
                               BM_SearchStep, true, threads)->Iterations(2)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
