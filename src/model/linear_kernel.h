// The kernel slot of a LinearSite: which implementation computes x·Wᵀ + b for a site, chosen once
// at load time from the weight's storage format (and, for packed kernels, the CPU's features).
//
// The dense kernel (libtorch matmul over the site's float weight) serves FP models, fake-quantized
// checkpoints, calibration and the search. A packed integer format registers its kernels under its
// format name; load code asks choose_linear_kernel(format) and the forward never changes.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"

namespace toga {

// y = x·Wᵀ + b with the site's float weight (after custom_weight). One-token fp32 inputs go through
// GEMV (see the .cpp for why).
class DenseLinearKernel final : public LinearKernel {
 public:
  std::string name() const override { return "dense"; }
  torch::Tensor apply(const LinearSite& site, const torch::Tensor& x) const override;
};

struct LinearKernelEntry {
  std::string format;  // storage format the kernel reads: "dense", later "toga-mixed-packed", ...
  std::string name;    // "dense", "avx512-vnni", "amx", "scalar", ...
  int priority = 0;    // the highest-priority available kernel of a format wins
  std::function<bool()> available;  // CPU features present, or nullptr = always
  std::function<std::shared_ptr<const LinearKernel>()> make;
};

// Registers a kernel; kernels register from their own translation unit's static initializer.
void register_linear_kernel(LinearKernelEntry entry);
// The best available kernel for `format`, or the one named by $TOGA_KERNEL when it is available
// for that format (pinning for tests and benchmarks). An unknown format is an error.
std::shared_ptr<const LinearKernel> choose_linear_kernel(const std::string& format);
// Every registered kernel of a format, best first (for `toga info` and the tests).
std::vector<LinearKernelEntry> linear_kernels(const std::string& format);

}  // namespace toga
