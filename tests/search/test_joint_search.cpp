// TOGA joint (DISP-LLM pruning + precision masks) on tiny models: the masked supernet with hard
// pruning masks is the extracted (physically smaller) model, the budget counts kept weights × bits
// as a naive per-weight count does, meet_budget lands on the target from either side with pruning
// groups never emptied, training moves the realized budget and the kept fraction to their targets
// (TOGA-fixed-sparsity), and a resumed joint run is the uninterrupted run.
#include <gtest/gtest.h>

#include <cmath>

#include "model/structure.h"
#include "model/tiny_model.h"
#include "quant/calibration.h"
#include "search/budget.h"
#include "search/train.h"
#include "test_util.h"
#include "util/error.h"

using namespace toga;
using namespace toga::test;
using torch::Tensor;

namespace {

std::vector<MaskGroup> joint_groups(Model& m, const Tensor& ids) {
  auto groups = quant_mask_groups(m);
  for (auto& g : prune_mask_groups(m)) groups.push_back(std::move(g));
  compute_channel_orders(m, groups, ids);
  return groups;
}

// Random {0, 1} masks keeping about `keep` of each group (a pruning group at least one channel).
std::vector<Tensor> random_hard_masks(const std::vector<MaskGroup>& groups, double keep, uint64_t seed) {
  torch::manual_seed(seed);
  std::vector<Tensor> masks;
  for (const auto& g : groups) {
    Tensor m = (torch::rand({g.channels}) < keep).to(torch::kFloat32);
    if (g.prune && m.sum().item<double>() == 0) m[0] = 1.0f;
    masks.push_back(m);
  }
  return masks;
}

// The budget the slow way: every weight of every site, kept or not, at its bits.
double naive_fraction(const Model& m, const std::vector<MaskGroup>& groups, const std::vector<Tensor>& masks,
                      const SupernetQuantizers& q) {
  double bits = 0, total = 0;
  for (const LinearSite* s : m.block_sites()) {
    Tensor row_keep = torch::ones({s->out_features()}, torch::kFloat64);
    Tensor col_keep = torch::ones({s->in_features()}, torch::kFloat64);
    Tensor col_bits = torch::full({s->in_features()}, 16.0, torch::kFloat64);
    for (size_t i = 0; i < groups.size(); ++i) {
      const auto& g = groups[i];
      const Tensor mk = masks[i].to(torch::kFloat64);
      for (const auto& r : g.sites)
        if (r == s->name) {
          if (g.prune) col_keep = col_keep * mk;
          else col_bits = torch::zeros_like(col_bits).index_put({g.order}, q.weight_low.bits + (q.weight_high.bits - q.weight_low.bits) * mk);
        }
      for (const auto& w : g.writers)
        if (w == s->name) row_keep = row_keep * mk;
    }
    const Tensor per_weight = row_keep.unsqueeze(1) * (col_keep * col_bits).unsqueeze(0);  // [out, in]
    bits += per_weight.sum().item<double>();
    total += 16.0 * double(s->out_features() * s->in_features());
  }
  return bits / total;
}

}  // namespace

TEST(JointSearch, MaskedSupernetIsTheExtractedModel) {
  const ModelConfig c = gqa_gradient_config();
  torch::manual_seed(4);
  const Tensor ids = torch::randint(c.vocab_size, {2, 8}, torch::kLong);
  Model m = random_model(c, 3, torch::kFloat64);
  auto groups = prune_mask_groups(m);
  compute_channel_orders(m, groups, ids);
  const auto masks = random_hard_masks(groups, 0.6, 11);
  Supernet net(m, groups, SupernetQuantizers{});
  net.set_masks(masks);
  torch::NoGradGuard no_grad;
  const Tensor masked = m.forward(ids);
  Model pruned = random_model(c, 3, torch::kFloat64);
  const auto blocks = block_pruning_from_masks(masks, groups);
  ASSERT_EQ(blocks.size(), size_t(c.num_hidden_layers));
  for (const auto& [layer, keep] : blocks) prune_block(pruned, layer, keep);
  EXPECT_LT(pruned.blocks[0].gate.weight.size(0), m.blocks[0].gate.weight.size(0));  // physically smaller
  const Tensor extracted = pruned.forward(ids);
  EXPECT_TRUE(torch::allclose(masked, extracted, 1e-10, 1e-10)) << (masked - extracted).abs().max();
  // A block that keeps every channel selects and adds the whole residual stream back: the same model.
  Model all = random_model(c, 3, torch::kFloat64), plain = random_model(c, 3, torch::kFloat64);
  std::vector<Tensor> keep_all;
  for (const auto& g : groups) keep_all.push_back(torch::ones({g.channels}));
  for (const auto& [layer, keep] : block_pruning_from_masks(keep_all, groups)) prune_block(all, layer, keep);
  EXPECT_TRUE(torch::equal(all.forward(ids), plain.forward(ids)));
}

TEST(JointSearch, BudgetIsKeptWeightsTimesBits) {
  const ModelConfig c = gqa_gradient_config();
  torch::manual_seed(4);
  const Tensor ids = torch::randint(c.vocab_size, {2, 8}, torch::kLong);
  Model m = random_model(c, 3);
  const auto groups = joint_groups(m, ids);
  SupernetQuantizers q;
  q.weight_low = {3, true, 0};
  for (uint64_t seed : {1, 2, 3}) {
    const auto masks = random_hard_masks(groups, 0.3 * double(seed), seed);
    EXPECT_NEAR(compressed_fraction(groups, masks, q).item<double>(), naive_fraction(m, groups, masks, q), 1e-12);
    // Soft masks: the same bilinear count (what the search differentiates).
    std::vector<Tensor> soft;
    for (const auto& g : groups) soft.push_back(torch::rand({g.channels}));
    EXPECT_NEAR(compressed_fraction(groups, soft, q).item<double>(), naive_fraction(m, groups, soft, q), 1e-12);
  }
  // Nothing pruned, nothing salient: low bits / 16; every channel kept and salient: high bits / 16.
  std::vector<Tensor> none, all;
  for (const auto& g : groups) {
    none.push_back(g.prune ? torch::ones({g.channels}) : torch::zeros({g.channels}));
    all.push_back(torch::ones({g.channels}));
  }
  EXPECT_NEAR(compressed_fraction(groups, none, q).item<double>(), 3.0 / 16, 1e-15);
  EXPECT_NEAR(compressed_fraction(groups, all, q).item<double>(), 8.0 / 16, 1e-15);
  EXPECT_NEAR(kept_fraction(groups, all).item<double>(), 1.0, 1e-15);
  // Pruning groups alone count 16 bits per kept weight (DISP-LLM's kept fraction).
  auto pruning = prune_mask_groups(random_model(c, 3));
  for (size_t i = 0; i < pruning.size(); ++i) pruning[i].order = groups[groups.size() - pruning.size() + i].order;
  const auto pm = random_hard_masks(pruning, 0.5, 7);
  EXPECT_NEAR(compressed_fraction(pruning, pm, q).item<double>(), kept_fraction(pruning, pm).item<double>(), 1e-15);
  EXPECT_THROW(check_budget(0.6, groups, q), Error);
}

TEST(JointSearch, MeetBudgetLandsOnTheTargetWithoutEmptyingAMask) {
  const ModelConfig c = gqa_gradient_config();
  torch::manual_seed(4);
  const Tensor ids = torch::randint(c.vocab_size, {2, 8}, torch::kLong);
  Model m = random_model(c, 3);
  const auto groups = joint_groups(m, ids);
  SupernetQuantizers q;
  double capacity = 0, largest_flip = 0;
  for (const LinearSite* s : m.block_sites()) capacity += 16.0 * double(s->out_features() * s->in_features());
  for (const auto& g : groups) {
    double lines = 0;  // weights one channel of this group touches, at most
    for (size_t k = 0; k < g.sites.size(); ++k) lines += double(g.site_rows[k]);
    for (size_t k = 0; k < g.writers.size(); ++k) lines += double(g.writer_cols[k]);
    largest_flip = std::max(largest_flip, lines * q.weight_high.bits / capacity);
  }
  torch::manual_seed(5);
  std::vector<Tensor> logits;
  for (const auto& g : groups) logits.push_back(torch::randn({g.channels}));
  for (double b : {0.06, 0.125, 0.2, 0.3, 0.45}) {
    const auto masks = meet_budget(logits, groups, q, b);
    const double got = compressed_fraction(groups, masks, q).item<double>();
    EXPECT_LE(got, b * (1 + 1e-12)) << b;
    EXPECT_GT(got, b - largest_flip) << b;
    for (size_t i = 0; i < groups.size(); ++i)
      if (groups[i].prune) EXPECT_GT(masks[i].sum().item<double>(), 0) << groups[i].kind;
  }
  EXPECT_THROW(meet_budget(logits, groups, q, 0.9), Error);
}

TEST(JointSearch, TrainingMovesBudgetAndFixedSparsityToTheirTargets) {
  const ModelConfig c = gqa_gradient_config();
  Model m = random_model(c, 3);
  const auto tokens = random_token_stream(c.vocab_size, 4000, 9);
  const auto groups = joint_groups(m, sample_calibration_windows(tokens, 4, 32, 1));
  SupernetQuantizers q;
  Supernet net(m, groups, q);
  SearchOptions o;
  o.budget = 0.125;       // W4 alone is 0.25: half of the weights must go
  o.start_keep = 1.0;     // ... from a start that prunes nothing
  o.start_salient = 0.0;
  o.steps = 60;
  o.seqlen = 16;
  o.lr = 0.05;
  o.init_logit = 3.0;
  o.progress = false;
  const auto r = train_search(m, net, tokens, o);
  EXPECT_GT(r.curve.front().budget, 0.2);
  const auto learned = sample_masks(r.logits, {0.5, false, true, 0});
  const double got = compressed_fraction(groups, learned, q).item<double>();
  EXPECT_LT(std::abs(got - 0.125) / 0.125, 0.1) << got;
  // TOGA-fixed-sparsity: the same budget at 25 % sparsity pays for salient channels instead.
  o.fixed_sparsity = 0.25;
  o.budget = 0.2;
  o.start_keep = -1;
  o.start_salient = -1;
  const auto start = starting_point(groups, q, o.budget, o.fixed_sparsity);
  EXPECT_NEAR(kept_fraction(groups, prior_masks(groups, start.salient_fraction, start.keep_fraction)).item<double>(), 0.75, 0.05);
  EXPECT_GT(start.salient_fraction, 0.0);
  const auto f = train_search(m, net, tokens, o);
  const auto fm = sample_masks(f.logits, {0.5, false, true, 0});
  EXPECT_LT(std::abs(kept_fraction(groups, fm).item<double>() - 0.75) / 0.75, 0.1);
  EXPECT_LT(std::abs(compressed_fraction(groups, fm, q).item<double>() - 0.2) / 0.2, 0.1);
}

TEST(JointSearch, ResumedJointRunIsTheUninterruptedRun) {
  const ModelConfig c = gqa_gradient_config();
  const auto tokens = random_token_stream(c.vocab_size, 4000, 9);
  auto run = [&](const std::string& ckpt, int steps, bool resume, bool soft) {
    Model m = random_model(c, 3);
    const auto groups = joint_groups(m, sample_calibration_windows(tokens, 4, 32, 1));
    SupernetQuantizers q;
    q.act_low = {4, true, 0};
    q.act_high = {8, true, 0};
    Supernet net(m, groups, q);
    SearchOptions o;
    o.budget = 0.15;
    o.sampling = soft ? "disp" : "ste";
    o.steps = steps;
    o.seqlen = 16;
    o.lr = 0.02;
    o.checkpoint_every = 2;
    o.checkpoint_path = ckpt;
    o.resume = resume;
    o.progress = false;
    return train_search(m, net, tokens, o);
  };
  ScratchDir dir;
  for (bool soft : {false, true}) {
    const std::string ckpt = dir / (soft ? "soft.pt" : "hard.pt");
    const auto full = run("", 6, false, soft);
    run(ckpt, 4, false, soft);
    const auto resumed = run(ckpt, 6, true, soft);
    EXPECT_EQ(resumed.resumed_from, 4);
    ASSERT_EQ(resumed.curve.size(), full.curve.size());
    for (size_t i = 0; i < full.curve.size(); ++i) EXPECT_EQ(resumed.curve[i].ce, full.curve[i].ce) << i;
    for (size_t i = 0; i < full.logits.size(); ++i) EXPECT_TRUE(torch::equal(resumed.logits[i], full.logits[i])) << i;
  }
}
