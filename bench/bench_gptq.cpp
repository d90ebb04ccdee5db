// GPTQ time per linear layer at Llama-3.2-1B shapes, with a random SPD Hessian.
//
// Float-op estimate for a weight [R, N] with block size B (multiply-add = 2 ops):
//   inverse-Hessian factor (float64): Cholesky N^3/3 + cholesky_inverse 2N^3/3 (trtri + lauum)
//                                     + Cholesky of H^-1 N^3/3                    = 4N^3/3
//   intra-block rank-1 updates:       sum over columns of 2 R (B - i)             ~ R N B
//   inter-block lazy updates (GEMM):  sum over blocks of 2 R B (N - i2)           = R N (N - B)
// i.e. 4N^3/3 + R N^2 in all; rounding, group fitting and copies (O(R N)) are not counted.
// BM_InverseHessianFactor times the first term alone so its share can be read off.
//
// On a machine shared with other jobs run it with OMP_WAIT_POLICY=passive: libgomp's default spin
// wait at the barriers of GPTQ's thousands of small BLAS calls made a 2-thread run 20-50x slower
// whenever the other core was busy (measured on the 2-core dev box).
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cstdlib>
#include <string>

#include "model/threads.h"
#include "quant/calibration.h"
#include "quant/gptq.h"

namespace {

struct Layer {
  const char* name;
  int64_t out, in;
};
// Llama-3.2-1B: hidden 2048, 32 query heads and 8 KV heads of 64, intermediate 8192.
constexpr Layer kLayers[] = {
    {"q_proj", 2048, 2048}, {"k_proj/v_proj", 512, 2048}, {"o_proj", 2048, 2048},
    {"gate/up_proj", 8192, 2048}, {"down_proj", 2048, 8192},
};
constexpr int64_t kBlock = 128;

double factor_flops(double n) { return 4.0 * n * n * n / 3.0; }
double gptq_flops(double rows, double n) { return factor_flops(n) + rows * n * n; }

// A calibration-like Hessian: low-rank correlated part plus a spread diagonal, SPD by construction.
torch::Tensor random_hessian(int64_t n) {
  torch::manual_seed(0);
  const torch::Tensor a = torch::randn({n, 256});
  return a.mm(a.t()) / 256 + torch::diag(torch::exp(torch::randn({n})));
}

// All available cores by default; TOGA_BENCH_THREADS overrides it (on a shared box OpenMP's
// spin-waiting makes two threads slower than one).
void set_threads() {
  const char* env = std::getenv("TOGA_BENCH_THREADS");
  toga::set_threads(env ? std::atoi(env) : 0);
}

// range(0): layer index; range(1): 0 = INT4 symmetric g128, 1 = Atom mixed (INT4 g128 clip 0.85,
// last 128 columns INT8 per row, act-order).
void BM_Gptq(benchmark::State& state) {
  set_threads();
  const Layer& layer = kLayers[state.range(0)];
  const bool atom = state.range(1) == 1;
  const torch::Tensor h = random_hessian(layer.in);
  torch::manual_seed(1);
  const torch::Tensor w = torch::randn({layer.out, layer.in});
  toga::GptqOptions o;
  o.low.bits = 4;
  o.low.group_size = 128;
  o.block_size = kBlock;
  if (atom) {
    o.low.clip_ratio = 0.85;
    o.high.bits = 8;
    o.k_salient = 128;
    o.act_order = true;
  }
  for (auto _ : state) benchmark::DoNotOptimize(toga::gptq_quantize(w, h, o).loss);
  state.SetLabel(std::string(layer.name) + " " + std::to_string(layer.out) + "x" + std::to_string(layer.in) +
                 (atom ? " atom-mixed" : " int4-g128"));
  state.counters["GFLOP/s"] = benchmark::Counter(gptq_flops(static_cast<double>(layer.out), static_cast<double>(layer.in)) / 1e9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = at::get_num_threads();
}

void BM_InverseHessianFactor(benchmark::State& state) {
  set_threads();
  const int64_t n = state.range(0);
  const torch::Tensor h = random_hessian(n).to(torch::kDouble);
  for (auto _ : state)
    benchmark::DoNotOptimize(torch::linalg_cholesky(torch::cholesky_inverse(torch::linalg_cholesky(h)), true));
  state.counters["GFLOP/s"] =
      benchmark::Counter(factor_flops(static_cast<double>(n)) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// The layer as the pipeline sees it: 16 calibration windows of 512 tokens (8192 rows; GPTQ's
// 128 x 2048 is too much for this machine) pass through a LinearSite whose StatisticsCollector
// accumulates H = (2/N) sum x x^T in float64, then GPTQ INT4 g128. Float ops: 2 * 8192 * N^2 for
// the Hessian (the site's own matmul, 2 * 8192 * R * N, is not counted) plus the GPTQ count.
void BM_CalibrationAndGptq(benchmark::State& state) {
  set_threads();
  const Layer& layer = kLayers[state.range(0)];
  constexpr int64_t kWindows = 16, kTokens = 512;
  torch::manual_seed(2);
  // Correlated activations with a few outlier channels, like real layer inputs.
  const torch::Tensor mix = torch::randn({layer.in, layer.in}) / std::sqrt(double(layer.in));
  const torch::Tensor channel_scale = torch::exp(torch::randn({layer.in}));
  std::vector<torch::Tensor> windows;
  for (int64_t i = 0; i < kWindows; ++i) windows.push_back(torch::randn({kTokens, layer.in}).mm(mix) * channel_scale);
  toga::LinearSite site;
  site.name = layer.name;
  site.weight = torch::randn({layer.out, layer.in});
  toga::GptqOptions o;
  o.low.bits = 4;
  o.low.group_size = 128;
  for (auto _ : state) {
    torch::NoGradGuard ng;
    toga::StatisticsCollector stats(std::vector<toga::LinearSite*>{&site}, /*with_hessian=*/true);
    for (const auto& x : windows) site.forward(x);
    stats.detach();
    benchmark::DoNotOptimize(toga::gptq_quantize(site.weight, stats.at(site.name).hessian().to(torch::kFloat32), o).loss);
  }
  state.SetLabel(std::string(layer.name) + " " + std::to_string(layer.out) + "x" + std::to_string(layer.in) +
                 " 16x512 calibration tokens");
  const double n = static_cast<double>(layer.in);
  state.counters["GFLOP/s"] = benchmark::Counter(
      (2.0 * kWindows * kTokens * n * n + gptq_flops(static_cast<double>(layer.out), n)) / 1e9,
      benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK(BM_CalibrationAndGptq)->DenseRange(0, 4)->Unit(benchmark::kMillisecond)->Iterations(1)->UseRealTime();
BENCHMARK(BM_Gptq)
    ->ArgsProduct({{0, 1, 2, 3, 4}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->Iterations(1)
    ->UseRealTime();
BENCHMARK(BM_InverseHessianFactor)->Arg(2048)->Arg(8192)->Unit(benchmark::kMillisecond)->Iterations(1)->UseRealTime();

BENCHMARK_MAIN();
