// One linear layer of the runtime: y = gather(x)·Ŵᵀ + b on the kernel its storage calls for —
// float32 panels (unquantized), the weight-only product (codes dequantized in registers) or the
// integer product with activations quantized per token on the fly (W4A4, W8A8, Atom's mixed
// partition). The gather (an Atom reorder, a pruned block's input list, or both) is fused into the
// activation quantization; the torch forward's packed kernels and the runtime forward both run this.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/qgemm.h"
#include "runtime/sgemm.h"
#include "runtime/wgemm.h"

namespace toga::rt {

enum class LinearKind { kDense, kWeightOnly, kWeightActivation };

// Per-thread buffers a linear needs (gathered input, activation codes); reused across calls, so the
// hot path allocates nothing once warm.
struct LinearScratch {
  std::vector<float> gathered;
  QuantizedActivations codes;
};

struct Linear {
  LinearKind kind = LinearKind::kDense;
  int64_t rows = 0, cols = 0;
  DenseWeight dense;          // kDense
  PackedWeight packed;        // kWeightOnly, kWeightActivation
  ActivationQuant act;        // kWeightActivation
  std::vector<int32_t> in_index;  // stored column k reads input channel in_index[k]; empty = identity
  std::vector<float> bias;        // [rows] or empty
  Isa isa = Isa::kScalar;

  // x [tokens, x_width] (x_width = cols without an index); y [tokens, rows].
  void forward(const float* x, int64_t tokens, int64_t x_width, float* y, LinearScratch& scratch) const;
  std::string kernel_name() const;
  // Bytes of the stored weight (codes or floats, scales, zeros): what a decode step streams.
  int64_t weight_bytes() const;
};

// Appends `b`'s rows to `a` when both read the same input the same way (kind, columns, gather index,
// column blocks, activation clips; `a`'s rows a whole number of panels), so one activation pass and
// one product serve both (q/k/v, gate/up). False, and `a` unchanged, otherwise.
bool append_rows(Linear& a, const Linear& b);

}  // namespace toga::rt
