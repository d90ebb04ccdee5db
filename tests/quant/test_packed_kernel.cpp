// A quantized checkpoint on the packed kernels gives the logits of its fake-quant evaluation (same
// codes; integer dot products, or weights dequantized in registers, instead of float GEMMs): KLD ≤
// 1e-4 on every kernel family this CPU has, the max |Δlogit| reported, for W4A4 + INT8 and the
// weight-only formats (W4 asymmetric groups, binary + INT4 salient, W3). A linear the kernels cannot
// run stays on the dense fake-quant kernel, with the reason. One block is pruned, as TOGA joint's
// checkpoints are.
#include <gtest/gtest.h>

#include <cstdlib>

#include "io/checkpoint.h"
#include "model/tiny_model.h"
#include "quant/format.h"
#include "quant/packed_kernel.h"
#include "quant/packed_test_models.h"
#include "quant/recipes.h"
#include "runtime/cpu.h"
#include "test_util.h"

using namespace toga;
using namespace toga::test;

namespace {

struct ScopedEnv {
  ScopedEnv(const char* name, const char* value) : name_(name) { setenv(name, value, 1); }
  ~ScopedEnv() { unsetenv(name_); }
  const char* name_;
};

double mean_kld(const torch::Tensor& ref_logits, const torch::Tensor& logits) {
  const auto p = torch::log_softmax(ref_logits.to(torch::kFloat64), -1), q = torch::log_softmax(logits.to(torch::kFloat64), -1);
  return (p.exp() * (p - q)).sum(-1).mean().item<double>();
}

struct Config {
  const char* name;
  QuantizeOptions options;
  const char* kernel;  // the name every block linear's kernel must have, before the ISA
};

std::vector<Config> configs() {
  QuantizeOptions atom = atom_ragged_options();
  QuantizeOptions w4 = find_recipe("gptq").defaults();       // W4A16, asymmetric groups
  w4.weight_low = {4, false, 24};
  QuantizeOptions binary = binary_int4_options();
  QuantizeOptions w3 = find_recipe("rtn").defaults();        // W3A16 per channel, in the INT4 container
  w3.weight_low = {3, true, 0};
  return {{"Atom W4A4 + INT8", atom, "packed-"},
          {"W4A16 asymmetric g24", w4, "packed-weight-only-"},
          {"binary + INT4 salient", binary, "packed-weight-only-"},
          {"W3A16 per channel", w3, "packed-weight-only-"}};
}

}  // namespace

TEST(PackedKernel, LogitsAgreeWithFakeQuantOnEveryKernelFamily) {
  const ModelConfig c = packed_test_config();
  torch::manual_seed(6);
  const torch::Tensor calib = torch::randint(c.vocab_size, {4, 32}, torch::kLong);
  const torch::Tensor ids = torch::randint(c.vocab_size, {2, 24}, torch::kLong);
  for (const Config& config : configs()) {
    SCOPED_TRACE(config.name);
    Model m = random_model(c, 5);
    Plan plan = uniform_plan(m, config.options, "test");
    plan.blocks[1] = pruned_block();
    const auto report = apply_plan(m, plan, calib, "test", false);
    ScratchDir dir;
    save_quantized_checkpoint(dir / "q", m, report, DType::F32, {});
    const Checkpoint ck = open_checkpoint(dir / "q");
    torch::NoGradGuard no_grad;
    const torch::Tensor fake = load_any_model(ck, {}).forward(ids);
    for (rt::Isa isa : {rt::Isa::kScalar, rt::Isa::kAvx512Vnni}) {
      if (!rt::isa_available(isa)) {
        std::printf("[ SKIPPED  ] %s: not on this CPU\n", rt::isa_name(isa));
        continue;
      }
      ScopedEnv pin("TOGA_ISA", rt::isa_name(isa));
      LoadOptions opts;
      opts.packed_kernels = true;
      const Model packed = load_any_model(ck, opts);
      int on_packed = 0;
      for (const LinearSite* s : packed.block_sites())
        on_packed += s->kernel && s->kernel->name() == std::string(config.kernel) + rt::isa_name(isa);
      EXPECT_EQ(on_packed, 7 * c.num_hidden_layers) << rt::isa_name(isa);
      const torch::Tensor logits = packed.forward(ids);
      const double kld = mean_kld(fake, logits);
      std::printf("%s, %s: KLD %.3g, max |Δlogit| %.3g\n", config.name, rt::isa_name(isa), kld,
                  (fake - logits).abs().max().item<double>());
      EXPECT_LT(kld, 1e-4) << rt::isa_name(isa);
    }
  }
}

TEST(PackedKernel, LinearsItCannotRunSayWhy) {
  ModelConfig c = tiny_config(Family::Llama);
  Model m = random_model(c, 5);
  torch::manual_seed(6);
  QuantizeOptions o = find_recipe("rtn").defaults();
  o.act_low = {4, true, 0};  // A4 on the low partition, the salient columns left at 16 bits
  o.act_high = {16};
  o.salient_fraction = 0.25;
  const torch::Tensor calib = torch::randint(c.vocab_size, {2, 16}, torch::kLong);
  const auto report = apply_plan(m, uniform_plan(m, o, "test"), calib, "test", false);
  std::string why;
  EXPECT_EQ(make_packed_kernel(report.linears.front(), m.site(report.linears.front().site), &why), nullptr);
  EXPECT_NE(why.find("one partition"), std::string::npos) << why;
}
