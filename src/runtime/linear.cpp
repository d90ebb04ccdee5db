#include "runtime/linear.h"

#include "util/error.h"

namespace toga::rt {

void Linear::forward(const float* x, int64_t tokens, int64_t x_width, float* y, LinearScratch& scratch) const {
  if (in_index.empty() && x_width != cols) fail("linear: input width {} for {} columns", x_width, cols);
  if (kind == LinearKind::kWeightActivation) {
    quantize_activations(x, tokens, packed, act, scratch.codes, isa, in_index.empty() ? nullptr : in_index.data(), x_width);
    qgemm(scratch.codes, packed, y, isa);
  } else {
    const float* in = x;
    if (!in_index.empty()) {
      scratch.gathered.resize(size_t(tokens * cols));
      for (int64_t t = 0; t < tokens; ++t)
        for (int64_t k = 0; k < cols; ++k) scratch.gathered[size_t(t * cols + k)] = x[t * x_width + in_index[size_t(k)]];
      in = scratch.gathered.data();
    }
    if (kind == LinearKind::kDense) sgemm(in, tokens, dense, y, isa);
    else wgemm(in, tokens, packed, y, isa);
  }
  if (!bias.empty())
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t n = 0; n < rows; ++n) y[t * rows + n] += bias[size_t(n)];
}

std::string Linear::kernel_name() const {
  const char* kinds[] = {"dense-", "packed-weight-only-", "packed-"};
  return std::string(kinds[int(kind)]) + isa_name(isa);
}

int64_t Linear::weight_bytes() const {
  if (kind == LinearKind::kDense) return int64_t(dense.data.size() * sizeof(float));
  return int64_t(packed.data.size() + packed.scales.size() * sizeof(float) + packed.zero_offset.size() * sizeof(float));
}

}  // namespace toga::rt
