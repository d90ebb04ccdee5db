// Layer-sharded calibration and GPTQ (dist/layer_shards.h), ranks as threads of this process: every
// rank holds only its blocks (the others are storage-less placeholders), the hidden states travel
// rank to rank, and rank 0's gathered report is the single process's, code for code.
#include <gtest/gtest.h>

#include <functional>
#include <future>

#include "dist/layer_shards.h"
#include "quant/format.h"
#include "model/tiny_model.h"
#include "quant/recipes.h"
#include "util/error.h"

using namespace toga;
using namespace toga::test;
using torch::Tensor;

namespace {

ModelConfig four_layers() {
  ModelConfig c = tiny_config(Family::Llama);
  c.num_hidden_layers = 4;
  return c;
}

Plan atom_plan(const Model& m) {
  QuantizeOptions o = find_recipe("atom").defaults();
  o.weight_low.group_size = o.act_low.group_size = 16;
  return find_recipe("atom").make(m, o);
}

// Codes as int8 [rows, in], whether held unpacked or packed (as rank 0 holds gathered ones).
Tensor codes_of(const QuantizedLinear& q) {
  return q.weight.codes.defined() ? q.weight.codes : unpack_codes(q.packed_codes, q.weight.groups, q.in_features(), "test");
}

void expect_same_reports(const QuantizationReport& a, const QuantizationReport& b) {
  ASSERT_EQ(a.linears.size(), b.linears.size());
  for (size_t i = 0; i < a.linears.size(); ++i) {
    const auto &x = a.linears[i], &y = b.linears[i];
    SCOPED_TRACE(x.site);
    EXPECT_EQ(x.site, y.site);
    EXPECT_EQ(x.salient, y.salient);
    EXPECT_EQ(x.gptq_loss, y.gptq_loss);
    EXPECT_TRUE(torch::equal(codes_of(x), codes_of(y)));
    EXPECT_TRUE(torch::equal(x.weight.scales, y.weight.scales));
    EXPECT_TRUE(torch::equal(x.weight.zeros, y.weight.zeros));
    EXPECT_TRUE(torch::equal(x.perm, y.perm));
    ASSERT_EQ(x.weight.groups.size(), y.weight.groups.size());
    EXPECT_EQ(x.method, y.method);
    EXPECT_EQ(x.act_low.bits, y.act_low.bits);
    EXPECT_TRUE(torch::equal(a.plan.sites.at(x.site).order, b.plan.sites.at(y.site).order));
  }
  EXPECT_DOUBLE_EQ(a.weight_bits_codes, b.weight_bits_codes);
  EXPECT_DOUBLE_EQ(a.weight_bits_total, b.weight_bits_total);
  EXPECT_DOUBLE_EQ(a.act_bits, b.act_bits);
}

// Rank 0's gathered report of a `world`-rank sharded apply_plan (ranks as threads).
QuantizationReport sharded_report(const ModelConfig& c, const ReferenceWeights& w, const Tensor& calib, int world) {
  const int port = free_loopback_port();
  std::vector<std::future<QuantizationReport>> done;
  for (int r = 0; r < world; ++r)
    done.push_back(std::async(std::launch::async, [&, r] {
      DistributedOptions o;
      o.world_size = world;
      o.rank = r;
      o.master = "127.0.0.1:" + std::to_string(port);
      o.timeout_seconds = 60;
      Collective comm(o);
      const LayerShard shard = pipeline_shard(comm, c.num_hidden_layers, 60);
      LoadOptions lo;
      lo.layer_begin = shard.begin;
      lo.layer_end = shard.end;
      lo.embeddings = shard.begin == 0;
      Model m = build_model(c, w, lo);
      auto report = apply_plan(m, atom_plan(m), calib, "plan", false, shard);
      gather_reports(comm, report, 60);
      return report;
    }));
  std::vector<QuantizationReport> reports;
  for (auto& d : done) reports.push_back(d.get());
  return reports[0];
}

}  // namespace

TEST(LayerShards, RangesAreContiguousAndBalanced) {
  for (int layers : {1, 2, 5, 30, 31})
    for (int world = 1; world <= std::min(layers, 7); ++world) {
      int next = 0;
      for (int r = 0; r < world; ++r) {
        const auto [b, e] = layer_range(layers, world, r);
        EXPECT_EQ(b, next);
        EXPECT_TRUE(e - b == layers / world || e - b == layers / world + 1) << layers << " " << world << " " << r;
        EXPECT_GE(e - b, layer_range(layers, world, 0).second) << "rank 0 never takes more";
        next = e;
      }
      EXPECT_EQ(next, layers);
    }
  EXPECT_THROW(layer_range(3, 4, 0), Error);
  EXPECT_THROW(layer_range(3, 2, 2), Error);
}

TEST(LayerShards, PlaceholdersHoldShapesAndRefuseToCompute) {
  const ModelConfig c = four_layers();
  LoadOptions lo;
  lo.layer_begin = 2;
  lo.embeddings = false;
  Model m = build_model(c, random_weights(c, 3), lo);
  EXPECT_TRUE(is_placeholder(m.blocks[0].q.weight));
  EXPECT_TRUE(is_placeholder(m.embed));
  EXPECT_FALSE(is_placeholder(m.blocks[2].q.weight));
  EXPECT_FALSE(is_placeholder(m.blocks[0].attn_norm));
  EXPECT_EQ(m.blocks[0].gate.weight.sizes(), m.blocks[2].gate.weight.sizes());
  EXPECT_EQ(m.blocks[0].q.weight.storage().nbytes(), m.blocks[0].q.weight.element_size()) << "one element of storage";
  const Tensor h = torch::randn({1, 3, c.hidden_size});
  EXPECT_THROW(m.block_forward(0, h, 0), Error);
  EXPECT_THROW(m.embed_tokens(torch::zeros({1, 3}, torch::kLong)), Error);
  EXPECT_NO_THROW(m.block_forward(3, h, 0));
  // The held block computes what the whole model's does.
  Model whole = build_model(c, random_weights(c, 3));
  torch::NoGradGuard ng;
  EXPECT_TRUE(torch::equal(m.block_forward(2, h, 0), whole.block_forward(2, h, 0)));
}

TEST(LayerShards, ReportSurvivesSerialization) {
  const ModelConfig c = four_layers();
  Model m = build_model(c, random_weights(c, 5));
  const Tensor calib = random_ids(c, 6, 4, 32);
  const auto report = apply_plan(m, atom_plan(m), calib, "plan", false);
  auto back = deserialize_report(serialize_report(report), "test");
  compute_bit_statistics(back);
  expect_same_reports(report, back);
  for (const auto& q : back.linears) EXPECT_FALSE(q.weight.codes.defined()) << "held packed";
  EXPECT_THROW(deserialize_report("not a report", "rank 1"), Error);
}

TEST(LayerShards, TwoAndThreeRanksGiveTheSingleProcessCodes) {
  const ModelConfig c = four_layers();
  const auto w = random_weights(c, 7);
  const Tensor calib = random_ids(c, 8, 4, 32);
  Model m = build_model(c, w);
  const auto single = apply_plan(m, atom_plan(m), calib, "plan", false);
  for (int world : {2, 3}) {
    SCOPED_TRACE(world);
    expect_same_reports(single, sharded_report(c, w, calib, world));
  }
}

TEST(LayerShards, AShardNeedsItsNeighbours) {
  const ModelConfig c = four_layers();
  Model m = build_model(c, random_weights(c, 9));
  LayerShard middle;
  middle.begin = 1;
  middle.end = 3;
  EXPECT_THROW(apply_plan(m, atom_plan(m), random_ids(c, 1, 2, 16), "plan", false, middle), Error);
}
