// The packed kernels in the kernel slot. A weight-activation quantized linear (INT4 / INT8
// partitions whose weight groups are also its activation groups: W4A4, W8A8, Atom's INT4 + INT8
// salient) runs on runtime/qgemm.h — activations quantized per token by the kernel itself, integer
// dot products, no float weight touched. A weight-only one (any code width up to 8, binary + INT4
// salient included) runs on runtime/wgemm.h. Everything else stays on the dense fake-quant kernel.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "quant/apply_plan.h"

namespace toga {

// The packed kernel for a quantized linear, or null with `why_not` saying what it lacks.
std::shared_ptr<const LinearKernel> make_packed_kernel(const QuantizedLinear& q, const LinearSite& site,
                                                       std::string* why_not = nullptr);

// Puts the packed kernel on every site of `linears` that can take it; returns how many did.
int use_packed_kernels(Model& model, const std::vector<QuantizedLinear>& linears);

}  // namespace toga
