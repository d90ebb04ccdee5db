// The runtime's float32 panel product against float64 on random data: odd rows (a partial panel),
// odd columns, token counts through every tile (1, 3, 16, 37), every kernel family this CPU has;
// outputs poisoned beforehand.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "runtime/sgemm.h"

using namespace toga::rt;

namespace {

void check_isa(Isa isa) {
  if (!isa_available(isa)) GTEST_SKIP() << isa_name(isa) << " is not available on this CPU";
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  struct Shape { int64_t tokens, rows, cols; };
  for (const Shape s : {Shape{1, 17, 33}, Shape{3, 40, 576}, Shape{16, 1, 7}, Shape{37, 35, 100}}) {
    SCOPED_TRACE(testing::Message() << s.tokens << " x " << s.rows << " x " << s.cols);
    std::vector<float> w(size_t(s.rows * s.cols)), x(size_t(s.tokens * s.cols));
    for (auto& v : w) v = normal(rng);
    for (auto& v : x) v = normal(rng);
    const DenseWeight packed = pack_dense(w.data(), s.rows, s.cols);
    std::vector<double> ref(size_t(s.tokens * s.rows));
    sgemm_reference(x.data(), s.tokens, w.data(), s.rows, s.cols, ref.data());
    std::vector<float> y(ref.size(), std::numeric_limits<float>::quiet_NaN());
    sgemm(x.data(), s.tokens, packed, y.data(), isa);
    for (size_t i = 0; i < y.size(); ++i) {
      ASSERT_TRUE(std::isfinite(y[i])) << "element " << i << " not written";
      // float32 accumulation of `cols` unit-variance products: error ~ ulp · sqrt(cols) · cols.
      EXPECT_NEAR(y[i], ref[i], 1e-6 * double(s.cols) * 4) << i;
    }
  }
}

}  // namespace

TEST(SGemm, ScalarKernelMatchesTheDefinition) { check_isa(Isa::kScalar); }
TEST(SGemm, Avx512KernelMatchesTheDefinition) { check_isa(Isa::kAvx512Vnni); }
