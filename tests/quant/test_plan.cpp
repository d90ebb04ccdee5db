// The Plan engine: a Plan written by anyone (a recipe, a search, a person) quantizes, saves, loads
// and evaluates; a recipe's resolved Plan reproduces its codes bit for bit; bad Plans are one-line
// errors naming the file.
#include <gtest/gtest.h>

#include <random>

#include "data/text.h"
#include "io/checkpoint.h"
#include "model/model.h"
#include "quant/apply_plan.h"
#include "quant/calibration.h"
#include "quant/format.h"
#include "quant/plan.h"
#include "quant/recipes.h"
#include "model/tiny_model.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "util/atomic_file.h"
#include "util/error.h"

using namespace toga;
using namespace toga::test;

namespace {

const std::string kHandPlan = std::string(TOGA_SOURCE_DIR) + "/tests/quant/data/hand_plan.json";

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A tiny random model and random calibration windows: no shared data needed.
struct Tiny {
  ModelConfig config = tiny_config(Family::Llama);
  ReferenceWeights weights = random_weights(config, 101);
  torch::Tensor calib;
  Tiny() {
    torch::manual_seed(101);
    calib = torch::randint(config.vocab_size, {4, 24}, torch::TensorOptions().dtype(torch::kLong));
  }
  Model fresh() const { return build_model(config, weights); }
};

void expect_same_codes(const QuantizationReport& a, const QuantizationReport& b) {
  ASSERT_EQ(a.linears.size(), b.linears.size());
  std::map<std::string, const QuantizedLinear*> by_site;
  for (const auto& q : b.linears) by_site[q.site] = &q;
  for (const auto& x : a.linears) {
    ASSERT_TRUE(by_site.count(x.site)) << x.site;
    const auto& y = *by_site.at(x.site);
    EXPECT_TRUE(torch::equal(x.weight.codes, y.weight.codes)) << x.site;
    EXPECT_TRUE(torch::equal(x.weight.scales, y.weight.scales)) << x.site;
    EXPECT_TRUE(torch::equal(x.weight.zeros, y.weight.zeros)) << x.site;
    EXPECT_TRUE(torch::equal(x.perm, y.perm)) << x.site;
    EXPECT_EQ(x.salient, y.salient) << x.site;
  }
}

}  // namespace

TEST(Plan, JsonRoundTripsEveryField) {
  Plan p;
  p.recipe = "test";
  p.kv = {4, false, 0};
  p.gptq.act_order = true;
  p.gptq.damp = 0.02;
  SitePlan s;
  s.order = torch::tensor(std::vector<int64_t>{2, 0, 1}, torch::kLong);
  s.salient = torch::tensor(std::vector<int64_t>{1}, torch::kLong);
  s.method = "gptq";
  s.weight_low = {3, false, 32, 0.9, true, false};
  s.act_low = {4, true, 128, 0.9};
  s.act_high = {8, true, 0};
  s.sparsity = 0.5;
  p.sites["layers.0.mlp.down_proj"] = s;
  BlockPruning b;
  b.attn_in = torch::tensor(std::vector<int64_t>{0, 3, 7}, torch::kLong);
  b.kv_heads = torch::tensor(std::vector<int64_t>{1}, torch::kLong);
  p.blocks[1] = b;
  p.default_site = SitePlan{};
  const auto j = plan_to_json(p);
  EXPECT_EQ(plan_to_json(plan_from_json(j, "mem")), j);
  EXPECT_EQ(plan_from_json(j, "mem").sites.at("layers.0.mlp.down_proj").sparsity, 0.5);
}

TEST(Plan, ResolvedPlanReproducesRecipeCodesBitForBit) {
  // Every recipe shape of stage 1 on a tiny model: RTN without reordering, GPTQ with groups and
  // act-order, Atom W4A4 with salient channels; the resolved Plan (explicit orders and salient sets)
  // applied through a file to a fresh model gives the same codes.
  Tiny t;
  std::vector<QuantizeOptions> cases;
  {
    QuantizeOptions o;
    o.method = "rtn";
    o.weight_low = {4, true, 16};
    o.reorder = false;
    cases.push_back(o);
  }
  {
    QuantizeOptions o;
    o.method = "gptq";
    o.weight_low = {3, true, 16};
    o.gptq.act_order = true;
    o.reorder = false;
    cases.push_back(o);
  }
  {
    QuantizeOptions o = find_recipe("atom").defaults();
    o.weight_low.group_size = o.act_low.group_size = 16;
    cases.push_back(o);
  }
  ScratchDir dir;
  for (size_t i = 0; i < cases.size(); ++i) {
    Model a = t.fresh();
    const Plan recipe_plan = uniform_plan(a, cases[i], "case" + std::to_string(i));
    const auto ra = apply_plan(a, recipe_plan, t.calib, "recipe", false);
    const std::string file = dir / ("plan" + std::to_string(i) + ".json");
    write_plan_file(file, ra.plan);
    Model b = t.fresh();
    const auto rb = apply_plan(b, read_plan_file(file), t.calib, file, false);
    expect_same_codes(ra, rb);
    torch::NoGradGuard ng;
    EXPECT_TRUE(torch::equal(a.forward(t.calib), b.forward(t.calib))) << i;
  }
}

TEST(Plan, HandWrittenPlanQuantizesSavesLoadsAndEvaluates) {
  TOGA_REQUIRE_FILE(stories260k_path());
  Model m = load_model(open_checkpoint(stories260k_path()));
  const auto tok = load_tokenizer(stories260k_path());
  const std::string text = read_text(shared_path("data/text/tinystories/TinyStories-valid-first-1000.txt"));
  const auto calib = sample_calibration_windows(tok->encode(text.substr(0, 200000)), 4, 128, 0);
  const Plan plan = read_plan_file(kHandPlan);
  const auto report = apply_plan(m, plan, calib, kHandPlan, false);
  EXPECT_EQ(report.linears.size(), 35u);  // the default covers every block linear

  // Each explicit salient set is exactly the last stored columns, at 8 bits.
  const std::map<std::string, std::vector<int64_t>> salient = {
      {"layers.0.self_attn.q_proj", {5, 17, 63, 2}},
      {"layers.0.self_attn.k_proj", {40}},
      {"layers.1.mlp.down_proj", {0, 1, 2, 3, 170, 171, 99}},
      {"layers.3.self_attn.o_proj", {10, 20, 30}},
      {"layers.4.mlp.up_proj", {1, 2, 3, 4, 5, 6, 7, 8}}};
  for (const auto& q : report.linears) {
    auto it = salient.find(q.site);
    if (it == salient.end()) continue;
    std::vector<int64_t> want = it->second, got;
    std::sort(want.begin(), want.end());
    const auto tail = m.site(q.site).in_index.narrow(0, q.perm.numel() - q.salient, q.salient).cpu();
    got.assign(tail.data_ptr<int64_t>(), tail.data_ptr<int64_t>() + tail.numel());
    std::sort(got.begin(), got.end());
    EXPECT_EQ(got, want) << q.site;
    EXPECT_EQ(q.weight.groups.back().bits, 8) << q.site;
  }
  // The explicit order is kept (salient channels moved last, the rest in the given sequence).
  const auto o_index = m.site("layers.3.self_attn.o_proj").in_index.cpu();
  EXPECT_EQ(o_index[0].item<int64_t>(), 63);
  EXPECT_EQ(o_index[63].item<int64_t>(), 10);

  ScratchDir dir;
  save_quantized_checkpoint(dir / "q", m, report, DType::F32, {});
  const Checkpoint ck = open_checkpoint(dir / "q");
  EXPECT_EQ(ck.quantization_config.at("recipe"), "hand");
  const Model loaded = load_any_model(ck, {});
  torch::NoGradGuard ng;
  const auto logits = m.forward(calib);
  EXPECT_TRUE(torch::equal(loaded.forward(calib), logits));
  // It evaluates: a finite loss, worse than the FP model's but not broken.
  const Model fp = load_model(open_checkpoint(stories260k_path()));
  auto nll = [&](const torch::Tensor& lg) {
    return torch::nn::functional::cross_entropy(lg.narrow(1, 0, 127).reshape({-1, lg.size(-1)}),
                                                calib.narrow(1, 1, 127).reshape({-1}))
        .item<double>();
  };
  const double q_nll = nll(logits), fp_nll = nll(fp.forward(calib));
  EXPECT_TRUE(std::isfinite(q_nll));
  EXPECT_GT(q_nll, fp_nll);
  EXPECT_LT(q_nll, fp_nll + 2.0);  // 1- and 2-bit layers cost ~1 nat; a broken model costs ln(512) = 6.2
  // The checkpoint's Plan re-applied to the base model gives the same codes.
  Model again = load_model(open_checkpoint(stories260k_path()));
  const auto r2 = apply_plan(again, plan_from_checkpoint(ck), calib, "checkpoint", false);
  expect_same_codes(report, r2);
}

TEST(Plan, BadPlansAreOneLineErrorsNamingTheFile) {
  Tiny t;
  const Model m = t.fresh();
  ScratchDir dir;
  auto plan_error = [&](const nlohmann::json& j) {
    const std::string file = dir / "bad.json";
    write_text_atomically(file, j.dump());
    const std::string msg = error_of([&] { validate_plan(read_plan_file(file), m, file); });
    EXPECT_NE(msg.find(file), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    return msg;
  };
  const nlohmann::json base = {{"toga_plan", 1}, {"sites", nlohmann::json::object()}};
  auto with_site = [&](const std::string& site, const nlohmann::json& entry) {
    auto j = base;
    j["sites"][site] = entry;
    return j;
  };
  EXPECT_NE(plan_error(with_site("layers.7.mlp.up_proj", {{"salient", {1}}})).find("not a linear layer"),
            std::string::npos);
  EXPECT_NE(plan_error(with_site("layers.0.mlp.up_proj", {{"salient", {1, 32}}})).find("channel 32 is out of range"),
            std::string::npos);
  EXPECT_NE(plan_error(with_site("layers.0.mlp.down_proj", {{"order", {0, 1, 2}}})).find("order has 3 channels"),
            std::string::npos);
  EXPECT_NE(plan_error(with_site("layers.0.mlp.up_proj", {{"salient", {3, 3}}})).find("appears twice"),
            std::string::npos);
  EXPECT_NE(plan_error(with_site("layers.0.mlp.up_proj", {{"weight", {{"low", {{"bits", 12}}}}}})).find("bits"),
            std::string::npos);
  EXPECT_NE(plan_error(with_site("layers.0.mlp.up_proj", {{"act", {{"low", {{"bits", 1}}}}}})).find("act.low bits 1"),
            std::string::npos);
  EXPECT_NE(plan_error(with_site("layers.0.mlp.up_proj", {{"salt", 1}})).find("unknown key 'salt'"), std::string::npos);
  auto blocks = base;
  blocks["blocks"]["0"]["attn_in"] = {5, 2};
  EXPECT_NE(plan_error(blocks).find("increasing"), std::string::npos);
  EXPECT_NE(plan_error({{"sites", {}}}).find("toga_plan"), std::string::npos);
}

TEST(Plan, MasksBecomeSalientSets) {
  Tiny t;
  Model m = t.fresh();
  std::vector<int> mask(32, 0);
  mask[3] = mask[30] = mask[7] = 1;
  const nlohmann::json masks = {{"layers.1.self_attn.v_proj", mask},
                                {"layers.0.mlp.down_proj", {{"salient", {0, 47}}}}};
  QuantizeOptions o;
  o.act_low = {4, true, 0};
  const Plan p = plan_from_masks(m, masks, o, "masks.json");
  EXPECT_EQ(p.recipe, "masks");
  const auto r = apply_plan(m, p, t.calib, "masks.json", false);
  ASSERT_EQ(r.linears.size(), 2u);
  for (const auto& q : r.linears) {
    const auto tail = m.site(q.site).in_index.narrow(0, q.perm.numel() - q.salient, q.salient).cpu();
    std::vector<int64_t> got(tail.data_ptr<int64_t>(), tail.data_ptr<int64_t>() + tail.numel());
    std::sort(got.begin(), got.end());
    const std::vector<int64_t> want =
        q.site == "layers.1.self_attn.v_proj" ? std::vector<int64_t>{3, 7, 30} : std::vector<int64_t>{0, 47};
    EXPECT_EQ(got, want);
  }
  EXPECT_NE(error_of([&] { plan_from_masks(m, {{"layers.0.mlp.up_proj", {1, 0}}}, o, "masks.json"); })
                .find("mask has 2 entries"),
            std::string::npos);
}

TEST(Plan, PruningAndQuantizationInOnePlan) {
  // Prune first, then quantize what is left: the pruned, quantized model saves and loads exactly.
  Tiny t;
  Model m = t.fresh();
  Plan p = uniform_plan(m, find_recipe("atom").defaults(), "atom");
  for (auto& [name, s] : p.sites) s.weight_low.group_size = s.act_low.group_size = 8;
  BlockPruning b;
  b.attn_in = torch::arange(0, 32, 2, torch::kLong);
  b.mlp_inner = torch::arange(0, 48, 3, torch::kLong);
  b.mlp_out = torch::arange(8, 32, torch::kLong);
  p.blocks[1] = b;
  const auto r = apply_plan(m, p, t.calib, "plan", false);
  EXPECT_EQ(m.site("layers.1.self_attn.q_proj").in_features(), 16);
  // q/k/v read only the kept residual channels, reordered.
  const auto idx = std::get<0>(torch::sort(m.site("layers.1.self_attn.q_proj").in_index.cpu()));
  EXPECT_TRUE(torch::equal(idx, b.attn_in));
  ScratchDir dir;
  save_quantized_checkpoint(dir / "q", m, r, DType::F32, {});
  const Model loaded = load_any_model(open_checkpoint(dir / "q"), {});
  torch::NoGradGuard ng;
  EXPECT_TRUE(torch::equal(loaded.forward(t.calib), m.forward(t.calib)));
}

TEST(Plan, SalientSetsOfAPrunedBlockAreSourceChannels) {
  // Channel numbers in a Plan are source numbers even where the block is pruned, down_proj's
  // intermediate channels included (down reads gate/up's compacted output, with no gather list).
  Tiny t;
  Model m = t.fresh();
  Plan p = uniform_plan(m, find_recipe("atom").defaults(), "atom");
  for (auto& [name, s] : p.sites) s.weight_low.group_size = s.act_low.group_size = 8;
  BlockPruning b;
  b.attn_in = torch::arange(0, 32, 2, torch::kLong);
  b.mlp_inner = torch::arange(0, 48, 3, torch::kLong);
  p.blocks[1] = b;
  p.sites["layers.1.mlp.down_proj"].salient = torch::tensor({9, 30, 45}, torch::kLong);   // kept: multiples of 3
  p.sites["layers.1.self_attn.k_proj"].salient = torch::tensor({4, 20}, torch::kLong);  // kept: even
  const auto r = apply_plan(m, p, t.calib, "plan", false);
  for (const auto& q : r.linears) {
    if (q.site == "layers.1.mlp.down_proj") EXPECT_EQ(q.salient, 3);
    if (q.site == "layers.1.self_attn.k_proj") EXPECT_EQ(q.salient, 2);
  }
  EXPECT_TRUE(torch::equal(std::get<0>(r.plan.sites.at("layers.1.mlp.down_proj").salient.sort()), torch::tensor({9, 30, 45}, torch::kLong)));
  EXPECT_TRUE(torch::equal(std::get<0>(r.plan.sites.at("layers.1.self_attn.k_proj").salient.sort()), torch::tensor({4, 20}, torch::kLong)));
  // The resolved order of down_proj is a permutation of the kept intermediate channels.
  EXPECT_TRUE(torch::equal(std::get<0>(r.plan.sites.at("layers.1.mlp.down_proj").order.sort()), b.mlp_inner));
  // A channel the block prunes is not a salient channel of it.
  Model again = t.fresh();
  p.sites["layers.1.mlp.down_proj"].salient = torch::tensor({10}, torch::kLong);
  EXPECT_THROW(apply_plan(again, p, t.calib, "plan", false), Error);
}
