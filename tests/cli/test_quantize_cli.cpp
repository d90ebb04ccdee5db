// `toga quantize` as a user drives it: recipe defaults overridden by exactly the flags given, the
// recipe recorded, a Plan file from anywhere applied and evaluated, bad Plans and bad flags refused
// before any output exists.
#include <gtest/gtest.h>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "cli/cli_util.h"
#include "test_util.h"
#include "util/atomic_file.h"

using namespace toga;
using namespace toga::test;
namespace fs = std::filesystem;

namespace {

nlohmann::json quant_config(const std::string& dir) {
  return nlohmann::json::parse(read_text_file(dir + "/config.json")).at("quantization_config");
}

const std::string kCalib = " --calib 2 --calib-seqlen 64 --threads 1";

}  // namespace

TEST(QuantizeCli, AtomDefaultsYieldToEveryFlagGiven) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  const std::string site = "model.layers.2.mlp.up_proj";
  ASSERT_EQ(run_toga("quantize " + stories260k_path() + " " + dir / "atom" + " --method atom" + kCalib).code, 0);
  auto qc = quant_config(dir / "atom");
  EXPECT_EQ(qc.at("recipe"), "atom");
  EXPECT_EQ(qc.at("layers").at(site).at("method"), "gptq");
  EXPECT_EQ(qc.at("layers").at(site).at("weight_low").at("group_size"), 128);
  EXPECT_DOUBLE_EQ(qc.at("layers").at(site).at("weight_low").at("clip_ratio").get<double>(), 0.85);
  EXPECT_EQ(qc.at("layers").at(site).at("act_low").at("bits"), 4);
  EXPECT_EQ(qc.at("kv_cache_scheme").at("num_bits"), 4);
  EXPECT_EQ(qc.at("layers").at(site).at("salient"), 8);  // 12.5% of 64
  // The verbs run its W4A4 + INT8 linears on the packed kernels, --fake-quant on the reference path,
  // and the result JSON says which ran (35 block linears + lm_head).
  for (const std::string mode : {"", " --fake-quant"}) {
    const std::string json = dir / ("ppl" + std::to_string(mode.size()) + ".json");
    ASSERT_EQ(run_toga("eval ppl " + dir / "atom" + " --dataset tinystories --max-windows 2 --threads 1 --json " + json + mode).code, 0);
    const auto kernels = nlohmann::json::parse(read_text_file(json)).at("run").at("linear_kernels");
    int packed = 0, dense = 0;
    for (const auto& [name, n] : kernels.items()) (name.rfind("packed-", 0) == 0 ? packed : dense) += n.get<int>();
    EXPECT_EQ(packed, mode.empty() ? 35 : 0) << kernels.dump();
    EXPECT_EQ(dense, mode.empty() ? 1 : 36) << kernels.dump();
  }

  // Flags equal to toga's generic defaults still count: the user asked for them.
  ASSERT_EQ(run_toga("quantize " + stories260k_path() + " " + dir / "given" +
                     " --method atom --weight-clip 1.0 --group-size 0 --kv-bits 16 --act-clip 1.0" + kCalib)
                .code,
            0);
  qc = quant_config(dir / "given");
  EXPECT_EQ(qc.at("recipe"), "atom");
  EXPECT_EQ(qc.at("layers").at(site).at("weight_low").at("group_size"), 0);
  EXPECT_DOUBLE_EQ(qc.at("layers").at(site).at("weight_low").at("clip_ratio").get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(qc.at("layers").at(site).at("act_low").at("clip_ratio").get<double>(), 1.0);
  EXPECT_TRUE(qc.at("kv_cache_scheme").is_null());
}

TEST(QuantizeCli, HandWrittenPlanQuantizesAndEvaluates) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  const std::string plan = std::string(TOGA_SOURCE_DIR) + "/tests/quant/data/hand_plan.json";
  const auto q = run_toga("quantize " + stories260k_path() + " " + dir / "q" + " --plan " + plan + kCalib);
  ASSERT_EQ(q.code, 0) << q.output;
  EXPECT_EQ(quant_config(dir / "q").at("recipe"), "hand");
  const auto ppl = run_toga("eval ppl " + dir / "q" + " --dataset tinystories --max-windows 4 --json " + dir / "ppl.json");
  ASSERT_EQ(ppl.code, 0) << ppl.output;
  const auto j = nlohmann::json::parse(read_text_file(dir / "ppl.json"));
  const double value = j.at("result").at("ppl").get<double>();
  EXPECT_TRUE(std::isfinite(value) && value > 1.0 && value < 100.0) << value;

  // A Plan decides what flags would: mixing them is refused.
  const auto mixed = run_toga("quantize " + stories260k_path() + " " + dir / "mixed" + " --plan " + plan + " --wbits 3");
  EXPECT_EQ(mixed.code, 1);
  EXPECT_NE(mixed.output.find("--wbits cannot be combined with --plan"), std::string::npos) << mixed.output;
}

TEST(QuantizeCli, BadPlanIsOneLineErrorNamingTheFileAndWritesNothing) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  const std::string plan = dir / "plan.json";
  write_text_atomically(plan, R"({"toga_plan": 1, "sites": {"layers.0.mlp.up_proj": {"salient": [64]}}})");
  const auto r = run_toga("quantize " + stories260k_path() + " " + dir / "out" + " --plan " + plan);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find(plan + ": site 'layers.0.mlp.up_proj' salient: channel 64 is out of range [0, 64)"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  EXPECT_FALSE(fs::exists(dir / "out"));
}

TEST(QuantizeCli, BillmReportsItsBitsThreeWaysAndRefusesOtherBits) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  const std::string out = dir / "billm", report = dir / "billm.json";
  auto r = run_toga("quantize " + stories260k_path() + " " + out + " --method billm --report " + report + kCalib);
  ASSERT_EQ(r.code, 0) << r.output;
  const auto j = nlohmann::json::parse(read_text_file(report));
  const auto& bits = j.at("method_bits");
  // As the paper counts (1 + salient columns), with the per-weight group flag (2), with every
  // stored parameter: increasing, and the stored codes are the flagged count.
  EXPECT_GT(bits.at("bits_paper").get<double>(), 1.0);
  EXPECT_LT(bits.at("bits_paper").get<double>(), 1.5);
  EXPECT_DOUBLE_EQ(bits.at("bits_with_flags").get<double>(), 2.0);
  EXPECT_GT(bits.at("bits_total").get<double>(), 2.0);
  EXPECT_DOUBLE_EQ(j.at("weight_bits_codes").get<double>(), 2.0);
  EXPECT_EQ(quant_config(out).at("recipe"), "billm");
  r = run_toga("eval ppl " + out + " --max-windows 1 --seqlen 64");
  EXPECT_EQ(r.code, 0) << r.output;
  r = run_toga("quantize " + stories260k_path() + " " + dir / "b2" + " --method billm --wbits 2" + kCalib);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("BiLLM's own 1-bit"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir / "b2"));
}

TEST(QuantizeCli, SlimLlmAndObrRefuseWhatTheyCannotHonour) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  auto r = run_toga("quantize " + stories260k_path() + " " + dir / "s1" + " --method slim-llm --wbits 1" + kCalib);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--wbits must be 2..7"), std::string::npos) << r.output;
  r = run_toga("quantize " + stories260k_path() + " " + dir / "s2" + " --method slim-llm --abits 4" + kCalib);
  EXPECT_NE(r.output.find("weight-only"), std::string::npos) << r.output;
  r = run_toga("quantize " + stories260k_path() + " " + dir / "o1" + " --method obr --group-size 32" + kCalib);
  EXPECT_NE(r.output.find("per output channel"), std::string::npos) << r.output;
  r = run_toga("quantize " + stories260k_path() + " " + dir / "o2" + " --method obr --sparsity-pattern 3:4" + kCalib);
  EXPECT_NE(r.output.find("unstructured or 2:4"), std::string::npos) << r.output;
  r = run_toga("quantize " + stories260k_path() + " " + dir / "r1" + " --method rtn --sparsity 0.5" + kCalib);
  EXPECT_NE(r.output.find("sparsity needs a pruning weight method"), std::string::npos) << r.output;
  // Stories260K's 172-wide down_proj input has no Hadamard matrix: OBR's front end says so.
  r = run_toga("quantize " + stories260k_path() + " " + dir / "o3" + " --method obr --rotation-steps 1" + kCalib);
  EXPECT_NE(r.output.find("width 172"), std::string::npos) << r.output;
  for (const char* d : {"s1", "s2", "o1", "o2", "r1", "o3"}) EXPECT_FALSE(std::filesystem::exists(dir / d)) << d;
}
