// TOGA-q's search on tiny models: the relaxed loss's gradient w.r.t. the hypernetwork agrees with
// finite differences, the supernet with hard "last k" masks is the fixed-fraction fake-quantized
// model, training moves the realized budget to the target, meet_budget meets it exactly, and a
// resumed run is the uninterrupted run.
#include <gtest/gtest.h>

#include <cmath>

#include "model/tiny_model.h"
#include "quant/calibration.h"
#include "quant/quantizer.h"
#include "search/hypernet.h"
#include "search/budget.h"
#include "search/train.h"
#include "search/supernet.h"
#include "search/quant_search_util.h"
#include "test_util.h"
#include "util/error.h"

using namespace toga;
using namespace toga::test;
using torch::Tensor;

namespace {

Tensor ce_loss(const Model& m, const Tensor& ids) {
  const int64_t T = ids.size(1);
  const Tensor logits = m.forward(ids).narrow(1, 0, T - 1);
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}), ids.narrow(1, 1, T - 1).reshape({-1}));
}

}  // namespace

// The Supernet's quantizers hold their ranges where the current mask puts them (the designed
// estimator, tests/quant/test_quantizer.cpp), which a finite difference would see move. Here the
// sites compute Q_h(W)·M + Q_l(W)·(1−M) with ranges fixed from the full weight, so the relaxed loss
// is smooth and every other piece — hypernetwork, Gumbel-Sigmoid relaxation, budget term, the
// model's backward to the masks — is checked exactly against finite differences in float64.
TEST(QuantSearch, RelaxedLossGradientMatchesFiniteDifferences) {
  const ModelConfig c = gqa_gradient_config();
  Model m = random_model(c, 3, torch::kFloat64);
  torch::manual_seed(4);
  const Tensor ids = torch::randint(c.vocab_size, {2, 8}, torch::kLong);
  auto groups = quant_mask_groups(m);
  compute_channel_orders(m, groups, ids);
  SupernetQuantizers q;
  q.weight_low = {3, true, 0};
  auto current = std::make_shared<std::vector<Tensor>>();
  for (size_t i = 0; i < groups.size(); ++i)
    for (const auto& name : groups[i].sites) {
      LinearSite& s = m.site(name);
      s.weight = s.weight.index_select(1, groups[i].order);
      s.in_index = groups[i].order;
      const Tensor qh = fake_quantize(s.weight, q.weight_high), ql = fake_quantize(s.weight, q.weight_low);
      s.custom_weight = [qh, ql, current, i](const Tensor&) { return qh * (*current)[i] + ql * (1 - (*current)[i]); };
    }
  Hypernet hyper(groups, fixed_fraction_masks(groups, 0.25), 1.0, 8, 8, 5);
  hyper->to(torch::kFloat64);
  const double target = 3.3, lambda = 2.0;  // far from the prior's 4.25 bits: |log| is smooth there
  auto loss_fn = [&] {
    const auto masks = sample_masks(hyper->forward(), {0.5, false, false, 0});
    *current = masks;
    return ce_loss(m, ids) + lambda * torch::abs(torch::log(weight_bits(groups, masks, q) / target));
  };
  loss_fn().backward();
  // Every parameter tensor, a few entries each, by the fourth-order central difference.
  torch::NoGradGuard no_grad;
  const double h = 1e-3;
  double worst = 0;
  int checked = 0;
  for (auto& p : hyper->named_parameters()) {
    const Tensor grad = p.value().grad();
    ASSERT_TRUE(grad.defined()) << p.key();
    double* data = p.value().data_ptr<double>();
    for (int64_t i = 0; i < p.value().numel(); i += std::max<int64_t>(1, p.value().numel() / 3)) {
      const double saved = data[i];
      auto at = [&](double d) {
        data[i] = saved + d;
        return loss_fn().item<double>();
      };
      const double fd = (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h);
      data[i] = saved;
      const double g = grad.flatten()[i].item<double>();
      const double scale = std::max({std::abs(fd), std::abs(g), 1e-8});
      worst = std::max(worst, std::abs(fd - g) / scale);
      ++checked;
    }
  }
  EXPECT_GT(checked, 40);
  EXPECT_LT(worst, 1e-5);
}

TEST(QuantSearch, HardLastKMasksAreTheFixedFractionModel) {
  const ModelConfig c = gqa_gradient_config();
  torch::manual_seed(4);
  const Tensor ids = torch::randint(c.vocab_size, {2, 8}, torch::kLong);
  Model m = random_model(c, 3);
  auto groups = quant_mask_groups(m);
  compute_channel_orders(m, groups, ids);
  SupernetQuantizers q;
  q.weight_low = {4, true, 0};
  q.act_low = {4, true, 0};
  q.act_high = {8, true, 0};
  Supernet net(m, groups, q);
  net.set_masks(fixed_fraction_masks(groups, 0.25));
  torch::NoGradGuard no_grad;
  const Tensor got = m.forward(ids);
  // The same model quantized independently: reordered weights, last k salient, fake_quantize_*.
  Model ref = random_model(c, 3);
  for (const auto& g : groups) {
    const int64_t k = std::llround(0.25 * double(g.channels));
    for (const auto& name : g.sites) {
      LinearSite& s = ref.site(name);
      s.weight = fake_quantize_weight(s.weight.index_select(1, g.order), q.weight_low, q.weight_high, k);
      s.in_index = g.order;
      s.custom_input = [q, k](const Tensor& x) { return fake_quantize_activation(x, q.act_low, q.act_high, k); };
    }
  }
  EXPECT_TRUE(torch::allclose(got, ref.forward(ids), 1e-5, 1e-5)) << (got - ref.forward(ids)).abs().max();
  EXPECT_NEAR(weight_bits(groups, fixed_fraction_masks(groups, 0.25), q).item<double>(), 5.0, 1e-12);
}

TEST(QuantSearch, TrainingMovesTheBudgetToTheTargetAndBudgetMasksMeetIt) {
  const ModelConfig c = gqa_gradient_config();
  Model m = random_model(c, 3);
  const auto tokens = random_token_stream(c.vocab_size, 4000, 9);
  auto groups = quant_mask_groups(m);
  compute_channel_orders(m, groups, sample_calibration_windows(tokens, 4, 32, 1));
  SupernetQuantizers q;
  q.weight_low = {2, true, 0};
  Supernet net(m, groups, q);
  SearchOptions o;
  o.budget = 5.0 / 16;  // the prior starts here ...
  o.steps = 0;
  const auto untrained = train_search(m, net, tokens, o);
  // ... and is moved to 3.0 by the budget term alone (CE of a random model barely cares).
  o.budget = 3.0 / 16;
  o.start_salient = 0.5;  // the 5-bit prior: (5 − 2) / (8 − 2)
  const double prior_bits = weight_bits(groups, sample_masks(untrained.logits, {0.5, false, true, 0}), q).item<double>();
  EXPECT_NEAR(prior_bits, 5.0, 0.05);
  o.steps = 60;
  o.batch = 2;
  o.seqlen = 16;
  o.lr = 0.05;
  o.init_logit = 0.5;
  o.progress = false;
  const auto r = train_search(m, net, tokens, o);
  ASSERT_EQ(r.curve.size(), 60u);
  EXPECT_GT(r.curve.front().budget * 16, 4.5);  // the first step saw the 5-bit start
  const double learned = weight_bits(groups, sample_masks(r.logits, {0.5, false, true, 0}), q).item<double>();
  // The search starts at 5.0 bits; training must pull it to within 5 % of 3.0.
  EXPECT_LT(std::abs(learned - 3.0) / 3.0, 0.05) << learned;
  for (double b : {2.7, 3.0, 4.4}) {
    const auto masks = meet_budget(r.logits, groups, q, b / 16);
    const double got = weight_bits(groups, masks, q).item<double>();
    double max_cost = 0, total = 0;
    for (const auto& g : groups) total += double(g.weight_rows * g.channels);
    for (const auto& g : groups) max_cost = std::max(max_cost, double(g.weight_rows) * 6.0 / total);
    EXPECT_LE(got, b + 1e-9);
    EXPECT_GT(got, b - max_cost - 1e-9);
    for (const auto& mk : masks) EXPECT_TRUE(((mk == 0) | (mk == 1)).all().item<bool>());
  }
  EXPECT_THROW(meet_budget(r.logits, groups, q, 9.0 / 16), Error);
  // Channel-order selection: every group's salient set is a suffix of its order (Atom's choice), and
  // the per-group counts are the learned logits' counts.
  const auto ordered = logits_in_channel_order(r.logits, groups);
  const auto masks = meet_budget(ordered, groups, q, 3.0 / 16);
  for (size_t i = 0; i < masks.size(); ++i) {
    const int64_t n = masks[i].numel(), k = masks[i].sum().item<int64_t>();
    EXPECT_TRUE(torch::equal(masks[i].narrow(0, n - k, k), torch::ones({k}))) << i;
    EXPECT_EQ(ordered[i].gt(0).sum().item<int64_t>(), r.logits[i].gt(0).sum().item<int64_t>()) << i;
  }
}

TEST(QuantSearch, ResumedRunIsTheUninterruptedRun) {
  const ModelConfig c = gqa_gradient_config();
  const auto tokens = random_token_stream(c.vocab_size, 4000, 9);
  auto run = [&](const std::string& ckpt, int steps, bool resume) {
    Model m = random_model(c, 3);
    return w3a4_quant_search(m, tokens, steps, ckpt, resume);
  };
  ScratchDir dir;
  const auto full = run("", 6, false);
  run(dir / "a.pt", 4, false);  // "interrupted" after step 4 (checkpointed)
  const auto resumed = run(dir / "a.pt", 6, true);
  EXPECT_EQ(resumed.resumed_from, 4);
  ASSERT_EQ(resumed.curve.size(), full.curve.size());
  for (size_t i = 0; i < full.curve.size(); ++i) EXPECT_EQ(resumed.curve[i].ce, full.curve[i].ce) << i;
  for (size_t i = 0; i < full.logits.size(); ++i) EXPECT_TRUE(torch::equal(resumed.logits[i], full.logits[i])) << i;
  // Other options: the checkpoint is refused with the file named.
  Model m = random_model(c, 3);
  auto groups = quant_mask_groups(m);
  compute_channel_orders(m, groups, sample_calibration_windows(tokens, 4, 32, 1));
  Supernet net(m, groups, SupernetQuantizers{});
  SearchOptions o;
  o.checkpoint_path = dir / "a.pt";
  o.resume = true;
  o.progress = false;
  try {
    train_search(m, net, tokens, o);
    ADD_FAILURE() << "expected a refusal";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("a.pt"), std::string::npos) << e.what();
  }
}
