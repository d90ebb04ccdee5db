// The kernel slot: the forward calls whatever kernel a site holds, the registry picks the best
// available kernel of a storage format, and TOGA_KERNEL pins one.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>

#include "model/linear_kernel.h"
#include "test_util.h"
#include "tiny_model.h"
#include "util/error.h"

using namespace toga;
using namespace toga::test;

namespace {

// An independent implementation (float64 matmul) that counts its calls.
class CountingKernel final : public LinearKernel {
 public:
  explicit CountingKernel(std::string name) : name_(std::move(name)) {}
  std::string name() const override { return name_; }
  torch::Tensor apply(const LinearSite& s, const torch::Tensor& x) const override {
    ++calls;
    auto y = torch::matmul(x.to(torch::kFloat64), s.weight.to(torch::kFloat64).t());
    if (s.bias.defined()) y = y + s.bias.to(torch::kFloat64);
    return y.to(x.scalar_type());
  }
  static inline std::atomic<int> calls{0};

 private:
  std::string name_;
};

}  // namespace

TEST(LinearKernel, ForwardUsesTheSiteKernelAndNothingElseChanges) {
  const auto c = tiny_config(Family::Qwen2);  // with biases
  Model m = random_model(c, 5);
  torch::NoGradGuard ng;
  const auto ids = torch::randint(c.vocab_size, {2, 7}, torch::kLong);
  const auto dense = m.forward(ids);
  const auto kernel = std::make_shared<CountingKernel>("counting");
  for (auto* s : m.block_sites()) s->kernel = kernel;
  CountingKernel::calls = 0;
  const auto other = m.forward(ids);
  EXPECT_EQ(CountingKernel::calls.load(), 7 * c.num_hidden_layers);
  EXPECT_LT((other - dense).abs().max().item<double>(), 1e-4);
}

TEST(LinearKernel, RegistryPicksTheBestAvailableAndHonoursThePin) {
  register_linear_kernel({"test-format", "slow", 0, nullptr, [] { return std::make_shared<CountingKernel>("slow"); }});
  register_linear_kernel({"test-format", "fast", 10, nullptr, [] { return std::make_shared<CountingKernel>("fast"); }});
  register_linear_kernel({"test-format", "unavailable", 20, [] { return false; },
                          [] { return std::make_shared<CountingKernel>("unavailable"); }});
  unsetenv("TOGA_KERNEL");
  EXPECT_EQ(choose_linear_kernel("test-format")->name(), "fast");
  EXPECT_EQ(choose_linear_kernel("dense")->name(), "dense");
  setenv("TOGA_KERNEL", "slow", 1);
  EXPECT_EQ(choose_linear_kernel("test-format")->name(), "slow");
  EXPECT_EQ(choose_linear_kernel("dense")->name(), "dense");  // a pin of another format's kernel
  setenv("TOGA_KERNEL", "unavailable", 1);
  try {
    choose_linear_kernel("test-format");
    ADD_FAILURE() << "pinning an unavailable kernel must fail";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("TOGA_KERNEL=unavailable"), std::string::npos) << e.what();
  }
  unsetenv("TOGA_KERNEL");
  try {
    choose_linear_kernel("no-such-format");
    ADD_FAILURE() << "an unknown format must fail";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no-such-format"), std::string::npos) << e.what();
  }
  ASSERT_EQ(linear_kernels("test-format").size(), 3u);
  EXPECT_EQ(linear_kernels("test-format").front().name, "unavailable");  // best first
}
