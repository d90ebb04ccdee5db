#include "runtime/sgemm.h"

namespace toga::rt {

// The AVX-512 kernel (sgemm_avx512.cpp).
void sgemm_avx512(const float* x, int64_t tokens, const DenseWeight& w, float* y);

namespace {

constexpr int64_t kPanel = 16;

void sgemm_scalar(const float* x, int64_t tokens, const DenseWeight& w, float* y) {
#pragma omp parallel for schedule(static)
  for (int64_t panel = 0; panel < w.panels; ++panel) {
    const float* data = w.data.data() + panel * w.cols * kPanel;
    for (int64_t t = 0; t < tokens; ++t) {
      float out[kPanel] = {};
      for (int64_t k = 0; k < w.cols; ++k)
        for (int64_t r = 0; r < kPanel; ++r) out[r] += data[k * kPanel + r] * x[t * w.cols + k];
      for (int64_t r = 0; r < kPanel && panel * kPanel + r < w.rows; ++r) y[t * w.rows + panel * kPanel + r] = out[r];
    }
  }
}

}  // namespace

DenseWeight pack_dense(const float* w, int64_t rows, int64_t cols) {
  DenseWeight d;
  d.rows = rows;
  d.cols = cols;
  d.panels = (rows + kPanel - 1) / kPanel;
  d.data.assign(size_t(d.panels * cols * kPanel), 0.0f);
  for (int64_t n = 0; n < rows; ++n)
    for (int64_t k = 0; k < cols; ++k) d.data[size_t((n / kPanel) * cols * kPanel + k * kPanel + n % kPanel)] = w[n * cols + k];
  return d;
}

void sgemm(const float* x, int64_t tokens, const DenseWeight& w, float* y, Isa isa) {
  switch (isa) {
    case Isa::kScalar: return sgemm_scalar(x, tokens, w, y);
    case Isa::kAvx512Vnni: return sgemm_avx512(x, tokens, w, y);
  }
}

void sgemm_reference(const float* x, int64_t tokens, const float* w, int64_t rows, int64_t cols, double* y) {
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t n = 0; n < rows; ++n) {
      double acc = 0;
      for (int64_t k = 0; k < cols; ++k) acc += double(w[n * cols + k]) * double(x[t * cols + k]);
      y[t * rows + n] = acc;
    }
}

}  // namespace toga::rt
