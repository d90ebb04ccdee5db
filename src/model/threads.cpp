#include "model/threads.h"

#include <sched.h>

#include <thread>

#include <torch/torch.h>

namespace toga {

int available_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

int set_threads(int n) {
  if (n <= 0) n = available_cores();
  // at::set_num_threads also sets OpenMP's pool, which the OpenMP build of OpenBLAS shares.
  at::set_num_threads(n);
  return n;
}

}  // namespace toga
