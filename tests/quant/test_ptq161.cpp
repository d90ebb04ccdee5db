// PTQ1.61's pieces against float64 formulas and its objective: the initial form (salient columns at
// 4 bits with the whole row's range, the rest μ + α·sign(w − μ) with μ the row mean and α = mean |w|
// over them); the loss is MSE − log(mean cosine); the block refinement lowers the block's loss
// against both targets, stores what it learned as row scales and column scales that dequantize to
// the attached weight, and leaves the codes and the salient columns alone; the recipe picks the
// channels of largest max |x|, shared by q/k/v.
#include <gtest/gtest.h>

#include <cmath>

#include "model/tiny_model.h"
#include "quant/apply_plan.h"
#include "quant/calibration.h"
#include "quant/ptq161.h"
#include "quant/recipes.h"
#include "util/error.h"

using namespace toga;
using namespace toga::test;
using torch::Tensor;

TEST(Ptq161, InitialFormIsTheFormula) {
  torch::manual_seed(1);
  const int64_t rows = 5, in = 20, k = 4;
  const Tensor w = torch::randn({rows, in}, torch::kFloat64) + 0.1;
  const QuantSpec high{4, false, 0};
  const QuantizedWeight q = ptq161_initial(w, k, high);
  ASSERT_EQ(q.groups.size(), 2u);
  EXPECT_EQ(q.groups[0].bits, 1);
  const Tensor got = dequantize(q).to(torch::kFloat64);
  for (int64_t r = 0; r < rows; ++r) {
    double mu = 0, alpha = 0;
    for (int64_t j = 0; j < in - k; ++j) mu += w[r][j].item<double>(), alpha += std::abs(w[r][j].item<double>());
    mu /= double(in - k), alpha /= double(in - k);
    for (int64_t j = 0; j < in - k; ++j) {
      const double want = mu + alpha * (w[r][j].item<double>() - mu >= 0 ? 1 : -1);
      EXPECT_NEAR(got[r][j].item<double>(), want, 1e-5) << r << " " << j;
    }
    // 4-bit asymmetric, range [min(row, 0), max(row, 0)] of the whole row.
    const double lo = std::min(0.0, w[r].min().item<double>()), hi = std::max(0.0, w[r].max().item<double>());
    const double step = (hi - lo) / 15, zero = std::round(-lo / step) - 8;
    for (int64_t j = in - k; j < in; ++j) {
      const double code = std::clamp(std::round(w[r][j].item<double>() / step) + zero, -8.0, 7.0);
      EXPECT_NEAR(got[r][j].item<double>(), step * (code - zero), 1e-5) << r << " " << j;
    }
  }
}

TEST(Ptq161, LossIsMseMinusLogMeanCosine) {
  torch::manual_seed(2);
  const Tensor a = torch::randn({1, 3, 6}, torch::kFloat64), b = a + 0.3 * torch::randn({1, 3, 6}, torch::kFloat64);
  double mse = 0, cos = 0;
  for (int64_t t = 0; t < 3; ++t) {
    double dot = 0, na = 0, nb = 0;
    for (int64_t i = 0; i < 6; ++i) {
      const double x = a[0][t][i].item<double>(), y = b[0][t][i].item<double>();
      mse += (x - y) * (x - y), dot += x * y, na += x * x, nb += y * y;
    }
    cos += dot / std::sqrt(na * nb);
  }
  EXPECT_NEAR(ptq161_loss(a, b).item<double>(), mse / 18 - std::log(cos / 3), 1e-12);
}

TEST(Ptq161, RefinementLowersTheBlockLossAndStoresWhatItLearned) {
  const ModelConfig c = tiny_config(Family::Llama);
  Model m = random_model(c, 3);
  const Tensor ids = random_ids(c, 4, 6, 16);
  QuantizeOptions o = find_recipe("ptq161").defaults();
  o.progress = false;
  o.refine_epochs = 0;
  Model initial = random_model(c, 3);
  const auto r0 = apply_plan(initial, find_recipe("ptq161").make(initial, o), ids, "ptq161", false);
  o.refine_epochs = 8;
  const auto r = apply_plan(m, find_recipe("ptq161").make(m, o), ids, "ptq161", false);
  ASSERT_EQ(r.linears.size(), r0.linears.size());
  for (size_t i = 0; i < r.linears.size(); ++i) {
    const auto& a = r.linears[i];
    const auto& b = r0.linears[i];
    // Block 0 sees the same input either way; later blocks see what the refined blocks pass on.
    const bool first_block = a.site.rfind("layers.0.", 0) == 0;
    if (first_block) {
      EXPECT_TRUE(torch::equal(a.weight.codes, b.weight.codes)) << a.site << ": codes stay";
      EXPECT_TRUE(torch::equal(a.perm, b.perm)) << a.site;
    }
    const int64_t n1 = a.weight.groups[0].col_end, k = a.in_features() - n1;
    EXPECT_EQ(k, std::llround(0.2 * double(a.in_features()))) << a.site;
    ASSERT_TRUE(a.weight.column_scales.defined());
    EXPECT_TRUE(torch::equal(a.weight.column_scales.narrow(0, n1, k), torch::ones({k}))) << "salient columns unscaled";
    EXPECT_FALSE(torch::equal(a.weight.column_scales.narrow(0, 0, n1), torch::ones({n1}))) << a.site << " learned r2";
    if (first_block) EXPECT_TRUE(torch::equal(dequantize(a.weight).narrow(1, n1, k), dequantize(b.weight).narrow(1, n1, k)));
    EXPECT_TRUE(torch::equal(m.site(a.site).weight, dequantize(a.weight))) << "the attached weight is the stored one";
  }
  // q/k/v read one input: one salient set (the last columns of one order).
  for (const auto& s : {"layers.0.self_attn.k_proj", "layers.0.self_attn.v_proj"})
    EXPECT_TRUE(torch::equal(r.plan.sites.at("layers.0.self_attn.q_proj").salient, r.plan.sites.at(s).salient));
  // The objective: block 0's loss against the FP block on the same (embedded) input is lower.
  Model fp = random_model(c, 3);
  torch::NoGradGuard ng;
  const Tensor h = fp.embed_tokens(ids);
  const Tensor target = fp.block_forward(0, h, 0);
  const double before = ptq161_loss(initial.block_forward(0, h, 0), target).item<double>();
  const double after = ptq161_loss(m.block_forward(0, h, 0), target).item<double>();
  EXPECT_LT(after, 0.9 * before);
}

TEST(Ptq161, RecipeRefusesWhatItCannotHonour) {
  QuantizeOptions o = find_recipe("ptq161").defaults();
  o.weight_low.bits = 2;
  EXPECT_THROW(find_recipe("ptq161").check(o), Error);
  o = find_recipe("ptq161").defaults();
  o.act_low = {4, true, 0};
  EXPECT_THROW(find_recipe("ptq161").check(o), Error);
  o = find_recipe("ptq161").defaults();
  o.reorder = false;
  EXPECT_THROW(find_recipe("ptq161").check(o), Error);
}
