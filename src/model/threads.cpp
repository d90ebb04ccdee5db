#include "model/threads.h"

#include <sched.h>

#include <cstdlib>
#include <thread>

#include <torch/torch.h>

namespace toga {

int available_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

int set_threads(int n) {
  // Unset: OMP_NUM_THREADS when the user (or `toga launch`, sharing the cores between processes)
  // set it, else every core this process may run on.
  if (n <= 0) {
    const char* env = std::getenv("OMP_NUM_THREADS");
    n = env ? std::atoi(env) : 0;
  }
  if (n <= 0) n = available_cores();
  // at::set_num_threads also sets OpenMP's pool, which the OpenMP build of OpenBLAS shares.
  at::set_num_threads(n);
  return n;
}

}  // namespace toga
