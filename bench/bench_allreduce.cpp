// The all-reduce behind the data-parallel search (src/dist/collective.*: c10d Gloo over TCP), ranks
// as threads of this process on loopback: seconds per float64 all-reduce for 2, 3 and 4 ranks at the
// search's sizes (SmolLM2 TOGA-q: 98k channels; joint: 213k) and at 64 MiB, with the algorithm
// bandwidth (bytes / s) and the bus bandwidth (× 2(N−1)/N, what each link carries in a ring), the
// numbers docs/DISTRIBUTED.md projects from. Loopback measures the stack, not a network.
//   build/bench_allreduce [repeats]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <vector>

#include "dist/collective.h"

using namespace toga;

namespace {

// Median seconds of `repeats` all-reduces of `n` float64 on `world` ranks (after one warm-up).
double median_allreduce(int world, int64_t n, int repeats) {
  const int port = free_loopback_port();
  std::vector<std::future<std::vector<double>>> ranks;
  for (int r = 0; r < world; ++r)
    ranks.push_back(std::async(std::launch::async, [=] {
      DistributedOptions o;
      o.world_size = world;
      o.rank = r;
      o.master = "127.0.0.1:" + std::to_string(port);
      Collective c(o);
      torch::Tensor t = torch::ones({n}, torch::kFloat64);
      std::vector<double> secs;
      for (int i = 0; i <= repeats; ++i) {
        c.barrier("bench");
        const auto t0 = std::chrono::steady_clock::now();
        c.allreduce_sum(t, "bench");
        if (i > 0) secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      return secs;
    }));
  std::vector<double> all;
  for (auto& f : ranks) {
    auto s = f.get();
    all.insert(all.end(), s.begin(), s.end());
  }
  std::sort(all.begin(), all.end());
  return all[all.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int repeats = argc > 1 ? std::atoi(argv[1]) : 20;
  torch::set_num_threads(1);
  std::printf("| ranks | float64 values | MB | ms | algorithm GB/s | bus GB/s |\n|---|---|---|---|---|---|\n");
  for (int world : {2, 3, 4})
    for (int64_t n : {int64_t(98'000), int64_t(213'000), int64_t(8 << 20)}) {
      const double s = median_allreduce(world, n, n > 1'000'000 ? std::max(3, repeats / 5) : repeats);
      const double bytes = double(n) * 8;
      std::printf("| %d | %ld | %.2f | %.3f | %.2f | %.2f |\n", world, long(n), bytes / 1e6, s * 1e3, bytes / s / 1e9,
                  bytes / s / 1e9 * 2.0 * (world - 1) / world);
      std::fflush(stdout);
    }
  return 0;
}
