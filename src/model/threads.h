// Thread settings for libtorch and the BLAS beneath it (libtorch defaults to one thread here).
#pragma once

namespace toga {

// n <= 0: OMP_NUM_THREADS if set, else the available cores. Returns the count set.
int set_threads(int n);
int available_cores();

}  // namespace toga
