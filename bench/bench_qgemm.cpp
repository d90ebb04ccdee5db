// The packed GEMMs (runtime/qgemm.h, runtime/wgemm.h) against the machine's peaks and libtorch fp32
// on the same shapes, in one process:
//   peak/vnni            vpdpbusd on registers only (4 MACs × 16 lanes per instruction): int8 GOPS
//   peak/fma             vfmadd on registers only (16 lanes): fp32 GFLOP/s
//   peak/read            AVX-512 loads summed over 1 GiB: read GB/s (the decode bound)
//   qgemm/<shape>/M:<m>  activation quantization + qgemm, Atom's W4A4 + 12.5 % INT8 layout (groups
//                        of 128), GOPS = 2·M·N·K / time, "of_vnni_peak", and GB/s of packed weight
//                        streamed (the decode bound at M = 1)
//   wgemm_w4/<shape>/M:<m>    weight-only W4A16 (asymmetric groups of 128): GFLOP/s, "of_fma_peak",
//                        weight GB/s and "of_read_peak"
//   wgemm_w1.6/<shape>/M:<m>  weight-only binary (groups of 128) + 20 % INT4 salient, the same
//   torch_fp32/<shape>/M:<m>  torch::linear on the same shapes, for the speed-up
// Shapes: SmolLM2-135M (576→576, 576→1536, 1536→576) and Llama-2-7B (4096→4096, 4096→11008,
// 11008→4096). Environment: TOGA_BENCH_THREADS (default "1,2"), TOGA_ISA (pin a kernel family).
#include <benchmark/benchmark.h>
#include <fmt/format.h>
#include <immintrin.h>
#include <torch/torch.h>

#include <chrono>
#include <random>
#include <sstream>

#include "model/threads.h"
#include "runtime/qgemm.h"
#include "runtime/wgemm.h"

namespace {

using Clock = std::chrono::steady_clock;
double g_vnni_peak = 0;  // GOPS, per thread count of the last peak run
double g_fma_peak = 0;   // GFLOP/s, the same
double g_read_peak = 0;  // GB/s, the same

struct Shape {
  const char* name;
  int64_t k, n;  // in, out
};
const Shape kShapes[] = {{"smollm2_q", 576, 576},    {"smollm2_gate", 576, 1536}, {"smollm2_down", 1536, 576},
                         {"llama7b_q", 4096, 4096}, {"llama7b_gate", 4096, 11008}, {"llama7b_down", 11008, 4096}};

__attribute__((target("avx512f,avx512bw,avx512vnni"))) int64_t vnni_loop(int64_t iters) {
  __m512i acc[8];
  for (int i = 0; i < 8; ++i) acc[i] = _mm512_set1_epi32(i);
  const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(5);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 8; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
  __m512i s = acc[0];
  for (int i = 1; i < 8; ++i) s = _mm512_add_epi32(s, acc[i]);
  return _mm512_reduce_add_epi32(s);
}

// Runs body(thread) on `threads` threads per iteration; returns the iterations per second.
template <class Body>
double runs_per_second(benchmark::State& state, int threads, Body body) {
  double wall = 0;
  int64_t runs = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    double sink = 0;
#pragma omp parallel for num_threads(threads) reduction(+ : sink)
    for (int t = 0; t < threads; ++t) sink += double(body(t));
    benchmark::DoNotOptimize(sink);
    wall += std::chrono::duration<double>(Clock::now() - t0).count();
    ++runs;
  }
  return double(runs) / wall;
}

void BM_VnniPeak(benchmark::State& state, int threads) {
  const int64_t iters = 1 << 22;
  g_vnni_peak = 2.0 * 64 * 8 * double(iters) * threads * runs_per_second(state, threads, [&](int) { return vnni_loop(iters); }) / 1e9;
  state.counters["GOPS"] = g_vnni_peak;  // 64 MACs per instruction
}

__attribute__((target("avx512f"))) float fma_loop(int64_t iters) {
  __m512 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(float(i));
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-3f);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  __m512 s = acc[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s);
}

void BM_FmaPeak(benchmark::State& state, int threads) {
  const int64_t iters = 1 << 22;
  g_fma_peak = 2.0 * 16 * 12 * double(iters) * threads * runs_per_second(state, threads, [&](int) { return fma_loop(iters); }) / 1e9;
  state.counters["GFLOP/s"] = g_fma_peak;
}

__attribute__((target("avx512f"))) int64_t read_sum(const int64_t* p, int64_t n) {
  __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
  for (int64_t i = 0; i + 32 <= n; i += 32)
    for (int j = 0; j < 4; ++j) acc[j] = _mm512_add_epi64(acc[j], _mm512_loadu_si512(p + i + 8 * j));
  return _mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(acc[0], acc[1]), _mm512_add_epi64(acc[2], acc[3])));
}

void BM_ReadPeak(benchmark::State& state, int threads) {
  const int64_t n = (int64_t(1) << 30) / 8;
  std::vector<int64_t> buf(size_t(n), 1);
  const double rate = runs_per_second(state, threads, [&](int t) { return read_sum(buf.data() + n / threads * t, n / threads); });
  g_read_peak = double(n) * 8 * rate / 1e9;
  state.counters["GB/s"] = g_read_peak;
}

std::vector<toga::rt::ColumnBlock> atom_blocks(int64_t k) {
  const int64_t salient = k / 8, low = k - salient;
  std::vector<toga::rt::ColumnBlock> out;
  for (int64_t c = 0; c < low; c += 128) out.push_back({c, std::min(c + 128, low), 4});
  out.push_back({low, k, 8});
  return out;
}

void BM_Qgemm(benchmark::State& state, Shape s, int64_t m, int threads) {
  toga::set_threads(threads);
  const auto blocks = atom_blocks(s.k);
  const int64_t nb = int64_t(blocks.size());
  std::mt19937 rng(1);
  std::vector<int8_t> codes(size_t(s.n * s.k));
  for (int64_t r = 0; r < s.n; ++r)
    for (const auto& b : blocks) {
      std::uniform_int_distribution<int> c(-(1 << (b.bits - 1)), (1 << (b.bits - 1)) - 1);
      for (int64_t j = b.begin; j < b.end; ++j) codes[size_t(r * s.k + j)] = int8_t(c(rng));
    }
  std::vector<float> scales(size_t(s.n * nb), 0.01f), zeros(size_t(s.n * nb), 0.0f);
  const auto w = toga::rt::pack_weight(codes.data(), scales.data(), zeros.data(), s.n, s.k, blocks);
  std::vector<float> x(size_t(m * s.k)), y(size_t(m * s.n));
  std::normal_distribution<float> normal;
  for (auto& v : x) v = normal(rng);
  toga::rt::ActivationQuant aq;
  for (const auto& b : blocks) aq.clip.push_back(b.bits == 4 ? 0.9 : 1.0);
  toga::rt::QuantizedActivations qx;
  const auto isa = toga::rt::selected_isa();
  double wall = 0;
  int64_t iters = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    toga::rt::quantize_activations(x.data(), m, w, aq, qx, isa);
    toga::rt::qgemm(qx, w, y.data(), isa);
    benchmark::DoNotOptimize(y.data());
    wall += std::chrono::duration<double>(Clock::now() - t0).count();
    ++iters;
  }
  const double gops = 2.0 * double(m * s.n * s.k) * double(iters) / wall / 1e9;
  state.counters["GOPS"] = gops;
  if (g_vnni_peak > 0) state.counters["of_vnni_peak"] = gops / g_vnni_peak;
  state.counters["weight_GB/s"] = double(w.data.size()) * double(iters) / wall / 1e9;
  state.SetLabel(toga::rt::isa_name(isa));
}

// Weight-only: `salient_fraction` of the columns INT4 (last), the rest `low_bits` in groups of 128.
void BM_Wgemm(benchmark::State& state, Shape s, int64_t m, int threads, int low_bits, double salient_fraction) {
  toga::set_threads(threads);
  const int64_t salient = int64_t(salient_fraction * double(s.k)), low = s.k - salient;
  std::vector<toga::rt::ColumnBlock> blocks;
  for (int64_t c = 0; c < low; c += 128) blocks.push_back({c, std::min(c + 128, low), low_bits});
  if (salient > 0) blocks.push_back({low, s.k, 4});
  const int64_t nb = int64_t(blocks.size());
  std::mt19937 rng(1);
  std::vector<int8_t> codes(size_t(s.n * s.k));
  for (int64_t r = 0; r < s.n; ++r)
    for (const auto& b : blocks) {
      const int lo = toga::rt::container_code_min(b.bits);
      std::uniform_int_distribution<int> c(lo, lo + (1 << b.bits) - 1);
      for (int64_t j = b.begin; j < b.end; ++j) codes[size_t(r * s.k + j)] = int8_t(c(rng));
    }
  std::vector<float> scales(size_t(s.n * nb), 0.01f), zeros(size_t(s.n * nb), 0.5f);
  const auto w = toga::rt::pack_weight(codes.data(), scales.data(), zeros.data(), s.n, s.k, blocks);
  std::vector<float> x(size_t(m * s.k)), y(size_t(m * s.n));
  std::normal_distribution<float> normal;
  for (auto& v : x) v = normal(rng);
  const auto isa = toga::rt::selected_isa();
  double wall = 0;
  int64_t iters = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    toga::rt::wgemm(x.data(), m, w, y.data(), isa);
    benchmark::DoNotOptimize(y.data());
    wall += std::chrono::duration<double>(Clock::now() - t0).count();
    ++iters;
  }
  const double gflops = 2.0 * double(m * s.n * s.k) * double(iters) / wall / 1e9;
  const double gbs = double(w.data.size()) * double(iters) / wall / 1e9;
  state.counters["GFLOP/s"] = gflops;
  if (g_fma_peak > 0) state.counters["of_fma_peak"] = gflops / g_fma_peak;
  state.counters["weight_GB/s"] = gbs;
  if (g_read_peak > 0) state.counters["of_read_peak"] = gbs / g_read_peak;
  state.SetLabel(toga::rt::isa_name(isa));
}

void BM_TorchFp32(benchmark::State& state, Shape s, int64_t m, int threads) {
  toga::set_threads(threads);
  torch::NoGradGuard ng;
  const auto x = torch::randn({m, s.k}), w = torch::randn({s.n, s.k});
  double wall = 0;
  int64_t iters = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    auto y = m == 1 ? torch::mv(w, x.reshape({-1})) : torch::linear(x, w);
    benchmark::DoNotOptimize(y.data_ptr());
    wall += std::chrono::duration<double>(Clock::now() - t0).count();
    ++iters;
  }
  state.counters["GFLOP/s"] = 2.0 * double(m * s.n * s.k) * double(iters) / wall / 1e9;
}

std::vector<int> bench_threads() {
  const char* env = std::getenv("TOGA_BENCH_THREADS");
  std::stringstream ss(env && *env ? env : "1,2");
  std::vector<int> out;
  for (std::string t; std::getline(ss, t, ',');) out.push_back(std::stoi(t));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  for (int t : bench_threads()) {
    if (toga::rt::cpu_info().avx512vnni)
      benchmark::RegisterBenchmark(fmt::format("peak/vnni/threads:{}", t).c_str(), BM_VnniPeak, t)->Iterations(3)->UseRealTime();
    if (toga::rt::cpu_info().avx512f) {
      benchmark::RegisterBenchmark(fmt::format("peak/fma/threads:{}", t).c_str(), BM_FmaPeak, t)->Iterations(3)->UseRealTime();
      benchmark::RegisterBenchmark(fmt::format("peak/read/threads:{}", t).c_str(), BM_ReadPeak, t)->Iterations(3)->UseRealTime();
    }
    for (const Shape& s : kShapes)
      for (int64_t m : {1, 16, 512, 2048}) {
        if (s.k >= 4096 && m >= 512 && t == 1) continue;  // minutes per call on one thread
        if (s.k >= 4096 && m == 2048) continue;
        benchmark::RegisterBenchmark(fmt::format("qgemm/{}/M:{}/threads:{}", s.name, m, t).c_str(), BM_Qgemm, s, m, t)
            ->UseRealTime()->MinTime(0.2);
        benchmark::RegisterBenchmark(fmt::format("wgemm_w4/{}/M:{}/threads:{}", s.name, m, t).c_str(), BM_Wgemm, s, m, t, 4, 0.0)
            ->UseRealTime()->MinTime(0.2);
        benchmark::RegisterBenchmark(fmt::format("wgemm_w1.6/{}/M:{}/threads:{}", s.name, m, t).c_str(), BM_Wgemm, s, m, t, 1, 0.2)
            ->UseRealTime()->MinTime(0.2);
        benchmark::RegisterBenchmark(fmt::format("torch_fp32/{}/M:{}/threads:{}", s.name, m, t).c_str(), BM_TorchFp32, s, m, t)
            ->UseRealTime()->MinTime(0.2);
      }
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
}
