// The search and the quantization on a CUDA device (a TOGA_CUDA build on a machine with a GPU; skipped
// elsewhere): the same code with the model on the GPU and the hypernetwork on the host gives the CPU's
// training curve and the CPU's quantized codes, to rounding.
#include <gtest/gtest.h>

#include "model/tiny_model.h"
#include "quant/apply_plan.h"
#include "quant/calibration.h"
#include "quant/recipes.h"
#include "search/quant_search_util.h"

using namespace toga;
using namespace toga::test;

namespace {

Model model_on(torch::Device device) {
  const ModelConfig c = gqa_gradient_config();
  LoadOptions lo;
  lo.device = device;
  return build_model(c, random_weights(c, 3), lo);
}

SearchResult short_search(torch::Device device) {
  Model m = model_on(device);
  return w3a4_quant_search(m, random_token_stream(m.config.vocab_size, 4000, 9), 4);
}

}  // namespace

TEST(SearchOnCuda, TrainingCurveIsTheCpuOne) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const auto cpu = short_search(torch::kCPU), gpu = short_search(torch::Device(torch::kCUDA, 0));
  ASSERT_EQ(cpu.curve.size(), gpu.curve.size());
  for (size_t i = 0; i < cpu.curve.size(); ++i) {
    EXPECT_NEAR(cpu.curve[i].ce, gpu.curve[i].ce, 1e-3 * std::abs(cpu.curve[i].ce)) << "step " << i + 1;
    EXPECT_NEAR(cpu.curve[i].budget, gpu.curve[i].budget, 1e-3) << "step " << i + 1;
  }
}

TEST(SearchOnCuda, GptqCodesAreTheCpuOnes) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  Model cpu = model_on(torch::kCPU), gpu = model_on(torch::Device(torch::kCUDA, 0));
  QuantizeOptions o = find_recipe("gptq").defaults();
  o.weight_low.group_size = 8;
  const auto calib = random_ids(cpu.config, 4, 4, 32);
  const auto a = apply_plan(cpu, find_recipe("gptq").make(cpu, o), calib, "plan", false);
  const auto b = apply_plan(gpu, find_recipe("gptq").make(gpu, o), calib, "plan", false);
  ASSERT_EQ(a.linears.size(), b.linears.size());
  for (size_t i = 0; i < a.linears.size(); ++i) {
    // GPU float32 sums round differently: a code may move by one step where a value sits on a boundary.
    const auto diff = (a.linears[i].weight.codes.to(torch::kInt) - b.linears[i].weight.codes.cpu().to(torch::kInt)).abs();
    EXPECT_LE(diff.max().item<int>(), 1) << a.linears[i].site;
    EXPECT_LT(diff.to(torch::kFloat).mean().item<double>(), 0.01) << a.linears[i].site;
  }
}
