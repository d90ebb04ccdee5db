// Whole-model quantization on real data: GPTQ beats RTN on stories260K's own layers, reordering
// keeps the function, and quantized checkpoints round-trip exactly or fail with clear errors.
#include <gtest/gtest.h>

#include <fstream>

#include "data/text.h"
#include "io/checkpoint.h"
#include "model/model.h"
#include "quant/calibration.h"
#include "quant/format.h"
#include "quant/gptq.h"
#include "quant/apply_plan.h"
#include "quant/recipes.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "util/atomic_file.h"
#include "util/error.h"

using namespace toga;
using namespace toga::test;

namespace {

struct Stories {
  Model model;
  torch::Tensor calib;  // [n, seqlen] real TinyStories windows
};

Stories load_stories(int windows = 8, int seqlen = 256) {
  Stories s;
  s.model = load_model(open_checkpoint(stories260k_path()));
  const auto tok = load_tokenizer(stories260k_path());
  const std::string text = read_text(shared_path("data/text/tinystories/TinyStories-valid-first-1000.txt"));
  s.calib = sample_calibration_windows(tok->encode(text.substr(0, 400000)), windows, seqlen, 0);
  return s;
}

std::string expect_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a toga::Error";
  return "";
}

}  // namespace

TEST(QuantizeModel, GptqHasLowerLayerOutputErrorThanRtnOnRealLayers) {
  TOGA_REQUIRE_FILE(stories260k_path());
  auto s = load_stories();
  // Capture every site's real input on the calibration windows.
  std::map<std::string, std::vector<torch::Tensor>> inputs;
  std::vector<ObserverHandle> handles;
  for (auto* site : s.model.block_sites())
    handles.push_back(site->add_observer([&](const LinearSite& st, const torch::Tensor& x) {
      inputs[st.name].push_back(x.reshape({-1, x.size(-1)}).clone());
    }));
  torch::NoGradGuard ng;
  s.model.forward(s.calib);
  int compared = 0;
  for (auto* site : s.model.block_sites()) {
    const auto x = torch::cat(inputs[site->name]).to(torch::kFloat64);  // [N, in]
    const auto h = (2.0 / double(x.size(0))) * torch::matmul(x.t(), x);
    const auto w = site->weight.to(torch::kFloat64);
    for (int bits : {3, 4}) {
      QuantSpec spec{bits, true, 0};
      const auto rtn = dequantize(quantize_weight(w, spec));
      GptqOptions g;
      g.low = spec;
      const auto r = gptq_quantize(w, h.to(torch::kFloat32), g);
      const auto gq = dequantize(r.weight).index_select(1, std::get<1>(torch::sort(r.perm))).to(torch::kFloat64);
      const double e_rtn = torch::matmul(x, (w - rtn).t()).pow(2).sum().item<double>();
      const double e_gptq = torch::matmul(x, (w - gq).t()).pow(2).sum().item<double>();
      EXPECT_LT(e_gptq, e_rtn) << site->name << " W" << bits;
      ++compared;
    }
  }
  EXPECT_EQ(compared, 5 * 7 * 2);
}

TEST(QuantizeModel, ReorderingLeavesUnquantizedLogitsUnchanged) {
  TOGA_REQUIRE_FILE(stories260k_path());
  auto s = load_stories(4, 128);
  torch::NoGradGuard ng;
  const auto before = s.model.forward(s.calib);
  std::map<std::string, torch::Tensor> orders;
  {
    StatisticsCollector stats(s.model.block_sites(), /*with_hessian=*/false);
    s.model.forward(s.calib);
    for (auto* site : s.model.block_sites()) orders[site->name] = salience_order(stats.at(site->name).mean_abs());
  }
  for (auto* site : s.model.block_sites()) {
    // A real reordering: not the identity, and shared by sites reading the same input.
    EXPECT_FALSE(torch::equal(orders[site->name], torch::arange(site->in_features())));
    site->weight = site->weight.index_select(1, orders[site->name]).contiguous();
    site->in_index = orders[site->name];
  }
  for (int l = 0; l < 5; ++l) {
    const auto L = [&](const char* n) { return fmt::format("layers.{}.{}", l, n); };
    EXPECT_TRUE(torch::equal(orders[L("self_attn.q_proj")], orders[L("self_attn.v_proj")]));
    EXPECT_TRUE(torch::equal(orders[L("mlp.gate_proj")], orders[L("mlp.up_proj")]));
  }
  const double diff = (s.model.forward(s.calib) - before).abs().max().item<double>();
  EXPECT_LT(diff, 1e-4) << "max |logit difference| " << diff;
}

TEST(QuantizeModel, SalientChannelsAndKV4BehaveAsSpecified) {
  TOGA_REQUIRE_FILE(stories260k_path());
  auto s = load_stories(4, 128);
  QuantizeOptions o;
  o.method = "rtn";
  o.weight_low = {4, true, 0};
  o.act_low = {4, true, 0};
  o.salient_fraction = 0.125;
  o.kv = {4, false, 0};
  o.progress = false;
  const auto report = quantize_model(s.model, o, s.calib);
  ASSERT_EQ(report.linears.size(), 35u);
  for (const auto& q : report.linears) {
    EXPECT_EQ(q.salient, std::llround(0.125 * q.perm.numel())) << q.site;
    // The salient columns are the channels with the largest mean |x|, stored last at INT8.
    EXPECT_EQ(q.weight.groups.back().bits, 8);
    EXPECT_EQ(q.weight.groups.back().col_begin, q.perm.numel() - q.salient);
  }
  // 12.5% at 8 bits + 87.5% at 4 bits = 4.5 bits for weights and activations.
  EXPECT_NEAR(report.weight_bits_codes, 4.5, 0.02);
  EXPECT_NEAR(report.act_bits, 4.5, 0.02);
  EXPECT_EQ(scheme_name(report), "W(4.5)A(4.5)");
  ASSERT_TRUE(static_cast<bool>(s.model.kv_transform));
  // The KV quantizer gives at most 16 levels per (token, head).
  torch::NoGradGuard ng;
  const auto kv = s.model.kv_transform(torch::randn({1, 4, 3, 8}));
  for (int h = 0; h < 4; ++h)
    for (int t = 0; t < 3; ++t) EXPECT_LE(std::get<0>(at::_unique(kv[0][h][t])).numel(), 16);
}

TEST(QuantizedFormat, PackingRoundTripsEveryBitWidth) {
  torch::manual_seed(3);
  for (int low_bits = 1; low_bits <= 8; ++low_bits) {
    const auto w = torch::randn({5, 77});
    const auto q = quantize_weight_mixed(w, 13, {low_bits, low_bits % 2 == 0, 16}, {8, true, 0});
    const auto packed = pack_codes(q);
    EXPECT_EQ(packed.size(1), packed_row_bytes(q.groups));
    EXPECT_EQ(packed.size(1), (64 * low_bits + 13 * 8 + 7) / 8);
    EXPECT_TRUE(torch::equal(unpack_codes(packed, q.groups, 77, "test"), q.codes)) << low_bits;
  }
}

TEST(QuantizedFormat, CheckpointRoundTripsBitExactly) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  auto s = load_stories(4, 128);
  QuantizeOptions o;
  o.method = "gptq";
  o.weight_low = {3, true, 32};
  o.act_low = {4, true, 0};
  o.salient_fraction = 0.125;
  o.kv = {4, false, 0};
  o.gptq.act_order = true;
  o.progress = false;
  const auto report = quantize_model(s.model, o, s.calib);
  const std::string out = dir / "q";
  save_quantized_checkpoint(out, s.model, report, DType::F32, {});
  const Checkpoint ck = open_checkpoint(out);
  const auto linears = read_quantized_linears(ck);
  ASSERT_EQ(linears.size(), report.linears.size());
  std::map<std::string, const QuantizedLinear*> by_site;
  for (const auto& q : linears) by_site[q.site] = &q;
  for (const auto& a : report.linears) {
    const auto& b = *by_site.at(a.site);
    EXPECT_TRUE(torch::equal(a.weight.codes, b.weight.codes)) << a.site;
    EXPECT_TRUE(torch::equal(a.weight.scales, b.weight.scales)) << a.site;
    EXPECT_TRUE(torch::equal(a.weight.zeros, b.weight.zeros)) << a.site;
    EXPECT_TRUE(torch::equal(a.perm, b.perm)) << a.site;
    EXPECT_EQ(a.salient, b.salient);
  }
  const Model loaded = load_any_model(ck, {});
  torch::NoGradGuard ng;
  EXPECT_TRUE(torch::equal(loaded.forward(s.calib), s.model.forward(s.calib)));
}

TEST(QuantizedFormat, BillmCodebookCheckpointRoundTripsBitExactly) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  auto s = load_stories(4, 128);
  QuantizeOptions o = find_recipe("billm").defaults();
  const auto report = apply_plan(s.model, find_recipe("billm").make(s.model, o), s.calib, "billm", false);
  for (const auto& q : report.linears) EXPECT_TRUE(q.weight.has_codebook()) << q.site;
  EXPECT_DOUBLE_EQ(report.weight_bits_codes, 2.0) << "sign and group flag (or two signs) per weight";
  const std::string out = dir / "b";
  save_quantized_checkpoint(out, s.model, report, DType::F32, {});
  const Checkpoint ck = open_checkpoint(out);
  EXPECT_FALSE(ck.tensors->has("model.layers.0.self_attn.q_proj.weight_scale")) << "no scales for codebook groups";
  const auto linears = read_quantized_linears(ck);
  std::map<std::string, const QuantizedLinear*> by_site;
  for (const auto& q : linears) by_site[q.site] = &q;
  for (const auto& a : report.linears) {
    const auto& b = *by_site.at(a.site);
    EXPECT_TRUE(torch::equal(a.weight.codes, b.weight.codes)) << a.site;
    EXPECT_TRUE(torch::equal(a.weight.levels, b.weight.levels)) << a.site;
    EXPECT_TRUE(torch::equal(a.perm, b.perm)) << a.site;
    EXPECT_TRUE(torch::equal(dequantize(a.weight), dequantize(b.weight))) << a.site;
  }
  const Model loaded = load_any_model(ck, {});
  torch::NoGradGuard ng;
  EXPECT_TRUE(torch::equal(loaded.forward(s.calib), s.model.forward(s.calib)));
  LoadOptions packed;
  packed.packed_kernels = true;  // codebook columns stay on the dense kernel
  EXPECT_TRUE(torch::equal(load_any_model(ck, packed).forward(s.calib), s.model.forward(s.calib)));
  EXPECT_THROW(find_recipe("billm").make(s.model, [] {
    auto w = find_recipe("billm").defaults();
    w.weight_low.bits = 2;
    return w;
  }()), Error);
}

// SliM-LLM's per-group widths (groups of 16: four per 64-wide input, eleven per 172-wide one),
// OBR's pruned 4-bit codes on SpinQuant's rotated front end (and SparseGPT 2:4 there) and PTQ1.61's
// column scales load back to the same model: the checkpoint lists groups whose widths the specs do
// not give.
TEST(QuantizedFormat, SlimLlmObrTwoFourAndPtq161CheckpointsRoundTripBitExactly) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  for (const std::string method : {"slim-llm", "obr", "obr-rtn", "spinquant-2:4", "ptq161"}) {
    auto s = load_stories(4, 128);
    const std::string recipe_name = method == "spinquant-2:4" ? "spinquant" : method;
    const Recipe& recipe = find_recipe(recipe_name);
    QuantizeOptions o = recipe.defaults();
    o.progress = false;
    o.rotation_steps = 2;
    o.refine_epochs = 1;
    o.online_transform = "rotation";  // 172 has no Hadamard construction
    if (method == "slim-llm") o.weight_low.group_size = 16;
    if (method == "spinquant-2:4") o.sparsity = 0.5, o.sparsity_pattern = "2:4";
    if (recipe.prepare) recipe.prepare(s.model, s.calib, o);
    const auto report = apply_plan(s.model, recipe.make(s.model, o), s.calib, method, false);
    if (method == "slim-llm") {
      int shifted = 0;
      for (const auto& q : report.linears) {
        shifted += q.details.at("groups_shifted").get<int>();
        int64_t sum = 0;
        for (const auto& g : q.weight.groups) sum += g.bits * (g.col_end - g.col_begin);
        EXPECT_DOUBLE_EQ(q.details.at("average_bits").get<double>(), double(sum) / double(q.in_features())) << q.site;
      }
      EXPECT_GT(shifted, 0) << "some layer moved bits between groups";
      // 64-wide inputs are four equal groups; 172 ends in a 12-wide group, so the average moves a little.
      EXPECT_NEAR(report.weight_bits_codes, 2.0, 0.01);
      EXPECT_NE(report.weight_bits_codes, 2.0) << "the true average, not the target";
    } else if (method == "ptq161") {
      for (const auto& q : report.linears) EXPECT_TRUE(q.weight.column_scales.defined()) << q.site;
    } else {
      for (const auto& q : report.linears) {
        const double zeros = (dequantize(q.weight) == 0).to(torch::kDouble).mean().item<double>();
        EXPECT_GE(zeros, 0.5) << method << " " << q.site;
      }
    }
    const std::string out = dir / (method == "spinquant-2:4" ? "sp24" : method);
    save_quantized_checkpoint(out, s.model, report, DType::F32, {});
    const Checkpoint ck = open_checkpoint(out);
    const auto linears = read_quantized_linears(ck);
    std::map<std::string, const QuantizedLinear*> by_site;
    for (const auto& q : linears) by_site[q.site] = &q;
    for (const auto& a : report.linears) {
      const auto& b = *by_site.at(a.site);
      EXPECT_TRUE(torch::equal(a.weight.codes, b.weight.codes)) << method << " " << a.site;
      EXPECT_EQ(a.weight.groups.size(), b.weight.groups.size()) << method << " " << a.site;
      EXPECT_EQ(a.sparsity_pattern, b.sparsity_pattern);
      EXPECT_EQ(a.weight.column_scales.defined(), b.weight.column_scales.defined());
      EXPECT_TRUE(torch::equal(dequantize(a.weight), dequantize(b.weight))) << method << " " << a.site;
    }
    const Model loaded = load_any_model(ck, {});
    torch::NoGradGuard ng;
    EXPECT_TRUE(torch::equal(loaded.forward(s.calib), s.model.forward(s.calib))) << method;
  }
}

TEST(QuantizedFormat, CorruptCheckpointsAreClearErrors) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  auto s = load_stories(2, 64);
  QuantizeOptions o;
  o.weight_low = {4, true, 0};
  o.salient_fraction = 0.25;
  o.progress = false;
  const auto report = quantize_model(s.model, o, s.calib);
  const std::string good = dir / "good";
  save_quantized_checkpoint(good, s.model, report, DType::F32, {});
  const auto config = nlohmann::json::parse(read_text_file(good + "/config.json"));

  auto with_config = [&](const std::function<void(nlohmann::json&)>& edit) {
    const std::string bad = dir / "bad";
    std::filesystem::remove_all(bad);
    std::filesystem::copy(good, bad);
    auto j = config;
    edit(j);
    write_text_atomically(bad + "/config.json", j.dump());
    return expect_error([&] { load_any_model(open_checkpoint(bad), {}); });
  };
  const std::string layer = "model.layers.1.mlp.down_proj";
  EXPECT_NE(with_config([&](auto& j) { j["quantization_config"]["layers"][layer]["salient"] = 9999; })
                .find("salient count 9999"), std::string::npos);
  EXPECT_NE(with_config([&](auto& j) { j["quantization_config"]["quant_method"] = "gptq"; }).find("quant_method"),
            std::string::npos);
  EXPECT_NE(with_config([&](auto& j) { j["quantization_config"]["format_version"] = 99; }).find("version 99"),
            std::string::npos);
  const auto wrong_bits = with_config([&](auto& j) { j["quantization_config"]["layers"][layer]["weight_low"]["bits"] = 3; });
  EXPECT_NE(wrong_bits.find("weight_packed' has shape"), std::string::npos) << wrong_bits;
  const auto bad_bits = with_config([&](auto& j) { j["quantization_config"]["layers"][layer]["weight_low"]["bits"] = 42; });
  EXPECT_NE(bad_bits.find("has no quantizer"), std::string::npos) << bad_bits;
  EXPECT_NE(with_config([&](auto& j) { j["quantization_config"]["layers"]["model.layers.9.mlp.up_proj"] =
                                           j["quantization_config"]["layers"][layer]; })
                .find("not a linear layer"), std::string::npos);

  // A permutation that is not one, written through the safetensors writer.
  {
    const std::string bad = dir / "badperm";
    QuantizationReport r = report;
    for (auto& q : r.linears)
      if (q.site == "layers.0.self_attn.q_proj") q.perm[1] = q.perm[0];
    save_quantized_checkpoint(bad, s.model, r, DType::F32, {});
    const auto msg = expect_error([&] { load_any_model(open_checkpoint(bad), {}); });
    EXPECT_NE(msg.find("input_perm is not a permutation"), std::string::npos) << msg;
    EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
  }
  // A truncated weights file is caught by the safetensors reader, naming the file.
  {
    const std::string bad = dir / "truncated";
    std::filesystem::copy(good, bad);
    const auto path = bad + "/model.safetensors";
    std::filesystem::resize_file(path, std::filesystem::file_size(path) - 100);
    const auto msg = expect_error([&] { load_any_model(open_checkpoint(bad), {}); });
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
  }
}
