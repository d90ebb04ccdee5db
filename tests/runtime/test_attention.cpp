// The attention tile against its float64 per-query definition: 1..16 queries, at the start of a
// sequence and deep into one, full causal and sliding-window, head sizes 64 and 40 (a partial
// vector), every kernel family this CPU has; outputs poisoned beforehand.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "runtime/attention.h"
#include "runtime/vector_math.h"

using namespace toga::rt;

namespace {

void check_isa(Isa isa) {
  if (!isa_available(isa)) GTEST_SKIP() << isa_name(isa) << " is not available on this CPU";
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  for (int64_t d : {64, 40})
    for (int64_t window : {0, 5})
      for (int nq : {1, 3, 16})
        for (int64_t pos0 : {0, 37})
          for (int64_t step : {1, 0}) {  // consecutive positions, or one position's grouped heads
          SCOPED_TRACE(testing::Message() << "d " << d << " window " << window << " nq " << nq << " pos0 " << pos0
                                          << " step " << step);
          const int64_t keys = pos0 + (nq - 1) * step + 1;
          std::vector<float> q(size_t(nq * 3 * d)), k(size_t(keys * d)), v(size_t(keys * d));
          for (auto* buf : {&q, &k, &v})
            for (auto& x : *buf) x = 2 * normal(rng);
          std::vector<float> got(size_t(nq * 2 * d), std::numeric_limits<float>::quiet_NaN()), want = got;
          AttentionTile a;
          a.q = q.data();
          a.q_stride = 3 * d;  // queries interleaved with other heads, as the runtime stores them
          a.nq = nq;
          a.pos0 = pos0;
          a.pos_step = step;
          a.window = window;
          a.keys = k.data();
          a.values = v.data();
          a.head_dim = d;
          a.scale = 0.125f;
          a.out_stride = 2 * d;
          a.out = want.data();
          attend_reference(a);
          a.out = got.data();
          std::vector<float> scratch(size_t(16 * keys));
          attend(a, scratch.data(), isa);
          for (int j = 0; j < nq; ++j)
            for (int64_t i = 0; i < d; ++i) {
              const float g = got[size_t(j * 2 * d + i)];
              ASSERT_TRUE(std::isfinite(g)) << "query " << j << " dim " << i << " not written";
              EXPECT_NEAR(g, want[size_t(j * 2 * d + i)], 2e-5) << "query " << j << " dim " << i;
            }
        }
}

}  // namespace

TEST(Attention, ScalarPathMatchesTheDefinition) { check_isa(Isa::kScalar); }
TEST(Attention, Avx512TileMatchesTheDefinition) { check_isa(Isa::kAvx512Vnni); }

TEST(VectorMath, ExpAndSiluMatchLibm) {
  for (Isa isa : available_isas()) {
    std::vector<float> x, y;
    for (float v = -87.0f; v <= 88.0f; v += 0.01234f) x.push_back(v);
    y.resize(x.size());
    exp_array(x.data(), y.data(), int64_t(x.size()), isa);
    for (size_t i = 0; i < x.size(); ++i)
      ASSERT_NEAR(y[i], std::exp(double(x[i])), 5e-7 * std::exp(double(x[i]))) << isa_name(isa) << " at " << x[i];
    std::vector<float> gate(x.begin(), x.end()), up(x.size(), 0.5f);
    for (auto& g : gate) g /= 4;
    silu_mul(gate.data(), up.data(), int64_t(gate.size()), isa);
    for (size_t i = 0; i < x.size(); ++i) {
      const double g = x[i] / 4.0, want = g / (1 + std::exp(-g)) * 0.5;
      ASSERT_NEAR(gate[i], want, 1e-6 * std::max(1.0, std::fabs(want))) << isa_name(isa) << " at " << g;
    }
  }
}
