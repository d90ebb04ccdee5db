// Online input transforms a Plan carries: the matrices are what their definitions say, a rotated
// site computes the same function, a Plan with transforms saves, loads and re-applies exactly, and
// rotating before W4A4 quantization lowers the error (QuaRot's published effect).
#include <gtest/gtest.h>

#include "io/checkpoint.h"
#include "model/tiny_model.h"
#include "quant/apply_plan.h"
#include "quant/format.h"
#include "quant/plan.h"
#include "quant/recipes.h"
#include "quant/transforms.h"
#include "test_util.h"
#include "util/error.h"

using namespace toga;
using namespace toga::test;

TEST(Transforms, HadamardIsSylvestersMatrixAndRotationsAreOrthogonal) {
  for (int64_t n : {1, 2, 8, 64}) {
    const auto h = orthogonal_transform("hadamard", n, 0).to(torch::kFloat64);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) {
        const double want = (__builtin_popcountll(uint64_t(i & j)) % 2 ? -1.0 : 1.0) / std::sqrt(double(n));
        ASSERT_NEAR(h[i][j].item<double>(), want, 1e-7) << n << " " << i << " " << j;
      }
    // Random signs multiply columns by ±1 and keep it orthogonal.
    const auto hs = orthogonal_transform("hadamard", n, 7).to(torch::kFloat64);
    EXPECT_TRUE(torch::allclose(hs.abs(), h.abs()));
    EXPECT_TRUE(torch::allclose(hs.t().matmul(hs), torch::eye(n, torch::kFloat64), 1e-6, 1e-6));
  }
  for (int64_t n : {3, 64, 172}) {
    const auto r = orthogonal_transform("rotation", n, 5).to(torch::kFloat64);
    EXPECT_TRUE(torch::allclose(r.t().matmul(r), torch::eye(n, torch::kFloat64), 1e-5, 1e-5)) << n;
    EXPECT_TRUE(torch::equal(orthogonal_transform("rotation", n, 5), orthogonal_transform("rotation", n, 5)));
    EXPECT_FALSE(torch::equal(orthogonal_transform("rotation", n, 5), orthogonal_transform("rotation", n, 6)));
  }
  // Block-diagonal over the salient partition.
  const auto p = partitioned_transform("rotation", 10, 3, 1);
  EXPECT_EQ(p.narrow(0, 0, 7).narrow(1, 7, 3).abs().max().item<float>(), 0.0f);
  EXPECT_TRUE(torch::equal(p.narrow(0, 7, 3).narrow(1, 7, 3), orthogonal_transform("rotation", 3, 2)));
  // Other widths come from quant/hadamard.h (tests/quant/test_hadamard.cpp); one with no
  // construction is refused by width.
  try {
    orthogonal_transform("hadamard", 18, 0);
    ADD_FAILURE() << "no Hadamard matrix of order 18 exists";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("width 18"), std::string::npos) << e.what();
  }
}

TEST(Transforms, RotatedSiteComputesTheSameFunction) {
  const auto c = tiny_config(Family::Llama);
  Model m = random_model(c, 9);
  torch::NoGradGuard ng;
  torch::manual_seed(1);
  const auto ids = torch::randint(c.vocab_size, {2, 9}, torch::kLong);
  const auto before = m.forward(ids);
  for (auto* s : m.block_sites()) {
    const auto r = orthogonal_transform("rotation", s->in_features(), 3);
    s->weight = torch::matmul(s->weight, r);
    s->in_transform = r;
  }
  EXPECT_LT((m.forward(ids) - before).abs().max().item<double>(), 1e-4);
}

TEST(Transforms, PlanWithTransformsSavesLoadsAndReappliesExactly) {
  const auto c = tiny_config(Family::Llama);
  torch::manual_seed(2);
  const auto calib = torch::randint(c.vocab_size, {4, 16}, torch::kLong);
  Model m = random_model(c, 11);
  QuantizeOptions o = find_recipe("atom").defaults();
  o.weight_low.group_size = o.act_low.group_size = 0;
  o.salient_fraction = 0.5;  // 16 of 32 channels: both partitions are powers of two for a Hadamard
  Plan plan = uniform_plan(m, o, "rotated");
  for (auto& [name, s] : plan.sites) {
    s.transform = name.find("down_proj") != std::string::npos ? "rotation" : "hadamard";
    s.transform_seed = 4;
  }
  const auto report = apply_plan(m, plan, calib, "plan", false);
  ScratchDir dir;
  save_quantized_checkpoint(dir / "q", m, report, DType::F32, {});
  const Checkpoint ck = open_checkpoint(dir / "q");
  const Model loaded = load_any_model(ck, {});
  torch::NoGradGuard ng;
  EXPECT_TRUE(torch::equal(loaded.forward(calib), m.forward(calib)));
  // The stored Plan names the transforms and reproduces the codes.
  const Plan stored = plan_from_checkpoint(ck);
  EXPECT_EQ(stored.sites.at("layers.0.mlp.down_proj").transform, "rotation");
  EXPECT_EQ(stored.sites.at("layers.1.self_attn.q_proj").transform, "hadamard");
  Model again = random_model(c, 11);
  const auto r2 = apply_plan(again, stored, calib, "stored", false);
  for (size_t i = 0; i < report.linears.size(); ++i)
    EXPECT_TRUE(torch::equal(report.linears[i].weight.codes, r2.linears[i].weight.codes)) << report.linears[i].site;
  // A Hadamard over a partition with no Hadamard matrix is refused naming the site.
  Plan bad = uniform_plan(random_model(c, 11), o, "bad");
  bad.sites.at("layers.0.mlp.down_proj").transform = "hadamard";
  bad.sites.at("layers.0.mlp.down_proj").salient_count = 6;  // 48 = 42 + 6: neither has one
  Model m3 = random_model(c, 11);
  try {
    apply_plan(m3, bad, calib, "bad.json", false);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.json: site 'layers.0.mlp.down_proj'"), std::string::npos) << e.what();
  }
}

TEST(Transforms, RotationLowersW4A4ErrorOnStories260K) {
  TOGA_REQUIRE_FILE(stories260k_path());
  const Model fp = load_model(open_checkpoint(stories260k_path()));
  torch::manual_seed(5);
  const auto ids = torch::randint(fp.config.vocab_size, {2, 64}, torch::kLong);
  torch::NoGradGuard ng;
  const auto ref = torch::log_softmax(fp.forward(ids), -1);
  auto kld = [&](const std::string& transform) {
    Model m = load_model(open_checkpoint(stories260k_path()));
    QuantizeOptions o;
    o.act_low = {4, true, 0};
    o.reorder = false;
    Plan p = uniform_plan(m, o, "rtn");
    for (auto& [name, s] : p.sites) {
      s.transform = transform;
      s.transform_seed = 1;
    }
    apply_plan(m, p, {}, "plan", false);
    const auto lp = torch::log_softmax(m.forward(ids), -1);
    return (ref.exp() * (ref - lp)).sum(-1).mean().item<double>();
  };
  const double plain = kld(""), rotated = kld("rotation");
  EXPECT_LT(rotated, 0.8 * plain) << "plain " << plain << " rotated " << rotated;
}
