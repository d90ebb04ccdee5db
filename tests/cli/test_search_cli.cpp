// `toga search` as a user drives it on stories260K. --mode quant: a checkpoint whose salient sets are
// the search's, a realized budget that meets the target, the budget in either unit, a resumed run
// that reproduces the finished one. --mode joint: a pruned, quantized checkpoint at the budget whose
// reported storage is the bytes in the file. --mode prune: DISP-LLM's pruned model, which `toga
// quantize` compresses further. Bad requests refused before any work.
#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "cli/cli_util.h"
#include "test_util.h"
#include "util/atomic_file.h"

using namespace toga;
using namespace toga::test;
namespace fs = std::filesystem;

namespace {

const std::string kSmall = " --abits 4 --steps 6 --seqlen 64 --order-windows 4 --calib 2 --calib-seqlen 64 --threads 1";

nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(read_text_file(path)); }

// A safetensors file's header, read directly (8-byte little-endian length, then JSON).
nlohmann::json safetensors_header(const std::string& path) {
  const std::string bytes = read_text_file(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(bytes[size_t(i)]);
  return nlohmann::json::parse(bytes.substr(8, n));
}

uint64_t entry_bytes(const nlohmann::json& e) {
  const auto offsets = e["data_offsets"].get<std::vector<uint64_t>>();
  return offsets[1] - offsets[0];
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

TEST(SearchCli, QuantSearchWritesACheckpointWithTheSearchedSalientSets) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  const std::string out = dir / "q";
  auto r = run_toga("search " + stories260k_path() + " " + out + " --budget 4.5" + kSmall);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("[search]"), std::string::npos) << "progress lines";
  const auto search = read_json(out + "/search.json");
  const double realized = search["budget"]["realized_bits"].get<double>();
  EXPECT_LE(realized, 4.5 + 1e-12);
  EXPECT_GT(realized, 4.5 * 0.995);
  EXPECT_EQ(search["curve"].size(), 6u);
  const auto cfg = read_json(out + "/config.json")["quantization_config"];
  EXPECT_EQ(cfg["recipe"], "toga-q");
  // The checkpoint's salient partition of every site is the search's set for its group.
  ASSERT_EQ(search["layers"].size(), 5u * 4u);
  int64_t salient_weight_bits = 0, weights = 0;
  for (const auto& g : search["layers"]) {
    const std::set<int64_t> want = g["salient"].get<std::set<int64_t>>();
    EXPECT_EQ(int64_t(want.size()), g["salient_count"].get<int64_t>());
    for (const auto& site : g["sites"]) {
      const auto& layer = cfg["layers"]["model." + site.get<std::string>()];
      EXPECT_EQ(layer["salient"].get<int64_t>(), int64_t(want.size())) << site;
    }
    salient_weight_bits += g["weight_rows"].get<int64_t>() * int64_t(want.size()) * 4;
    weights += g["weight_rows"].get<int64_t>() * g["channels"].get<int64_t>();
  }
  EXPECT_NEAR(4.0 + double(salient_weight_bits) / double(weights), realized, 1e-9);
  // salient_masks.json re-applied by `toga quantize` with the same recipe and calibration writes the
  // same weights: the checkpoint is the search's sets through the one engine.
  r = run_toga("quantize " + stories260k_path() + " " + dir / "again" +
               " --method atom --abits 4 --calib 2 --calib-seqlen 64 --threads 1 --salient-masks " + out +
               "/salient_masks.json");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(read_text_file(out + "/model.safetensors"), read_text_file(dir / "again/model.safetensors"));
  EXPECT_EQ(run_toga("eval ppl " + out + " --dataset tinystories --seqlen 64 --max-windows 2 --threads 1").code, 0);

  // Resuming the finished run (its checkpoint holds step 6) reproduces the same allocation.
  r = run_toga("search " + stories260k_path() + " " + out + " --budget 4.5 --resume --force" + kSmall);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("resumed from"), std::string::npos) << r.output;
  EXPECT_EQ(read_json(out + "/search.json")["layers"], search["layers"]);
  // The same budget relative to FP16 (4.5 / 16) is the same search.
  r = run_toga("search " + stories260k_path() + " " + dir / "fp16" + " --budget 0.28125 --budget-unit fp16" + kSmall);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(read_json(dir / "fp16/search.json")["layers"], search["layers"]);
}

TEST(SearchCli, JointSearchWritesAPrunedQuantizedCheckpointAtTheBudget) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  const std::string out = dir / "joint";
  auto r = run_toga("search " + stories260k_path() + " " + out + " --mode joint --budget 0.125" + kSmall);
  ASSERT_EQ(r.code, 0) << r.output;
  const auto search = read_json(out + "/search.json");
  const auto& budget = search["budget"];
  const double realized = budget["realized_fp16_fraction"].get<double>();
  EXPECT_LE(realized, 0.125 + 1e-12);
  EXPECT_GT(realized, 0.125 * 0.99);
  EXPECT_LT(budget["kept_fraction"].get<double>(), 0.75);  // W4 alone is 0.25: the budget needs pruning
  const auto cfg = read_json(out + "/config.json")["quantization_config"];
  EXPECT_EQ(cfg["recipe"], "toga");
  // The storage the checkpoint reports is what the file holds, counted here from its header.
  const auto header = safetensors_header(out + "/model.safetensors");
  uint64_t codes = 0, params = 0, indices = 0;
  for (const auto& [name, e] : header.items()) {
    if (name == "__metadata__") continue;
    if (ends_with(name, ".weight_packed")) codes += entry_bytes(e);
    else if (ends_with(name, ".weight_scale") || ends_with(name, ".weight_zero_point")) params += entry_bytes(e);
    else if (e["dtype"] == "I32") indices += entry_bytes(e);
  }
  EXPECT_EQ(cfg["storage"]["code_bytes"].get<uint64_t>(), codes);
  EXPECT_EQ(cfg["storage"]["param_bytes"].get<uint64_t>(), params);
  EXPECT_EQ(cfg["storage"]["index_bytes"].get<uint64_t>(), indices);
  // Packed codes are the theoretical budget up to each row's byte padding.
  const double on_disk = double(codes) / budget["fp16_linear_bytes"].get<double>();
  EXPECT_GE(on_disk, realized - 1e-12);
  EXPECT_LT(on_disk, realized * 1.02);
  // Physically smaller: every block stores the channels its pruning masks kept, and every site the
  // search's salient set.
  for (const auto& g : search["layers"]) {
    const std::string layer = "model.layers." + std::to_string(g["layer"].get<int>());
    if (g.contains("kept_count")) {
      const std::string kind = g["kind"];
      const std::string site = kind == "P1_attn_in" ? "self_attn.q_proj" : kind == "P2_attn_out" ? "self_attn.o_proj"
                               : kind == "P3_mlp_in" ? "mlp.gate_proj" : "mlp.down_proj";
      const auto shape = header[layer + "." + site + ".weight_scale"]["shape"];
      const int64_t stored = kind == "P2_attn_out" || kind == "P5_mlp_out" ? shape[0].get<int64_t>()
                             : header[layer + "." + site + ".input_perm"]["shape"][0].get<int64_t>();
      EXPECT_EQ(stored, g["kept_count"].get<int64_t>()) << layer << " " << kind;
    } else {
      for (const auto& site : g["sites"])
        EXPECT_EQ(cfg["layers"]["model." + site.get<std::string>()]["salient"].get<int64_t>(), g["salient_count"].get<int64_t>());
    }
  }
  EXPECT_EQ(run_toga("eval ppl " + out + " --dataset tinystories --seqlen 64 --max-windows 2 --threads 1").code, 0);
  // TOGA-fixed-sparsity pins the pruned fraction.
  r = run_toga("search " + stories260k_path() + " " + dir / "fixed" + " --mode joint --budget 0.2 --fixed-sparsity 0.3" + kSmall);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NEAR(read_json(dir / "fixed/search.json")["budget"]["sparsity"].get<double>(), 0.3, 0.05);
}

TEST(SearchCli, PruneSearchWritesAPrunedModelThatQuantizeCompresses) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  const std::string out = dir / "disp";
  auto r = run_toga("search " + stories260k_path() + " " + out + " --mode prune --budget 0.5" + kSmall);
  ASSERT_EQ(r.code, 0) << r.output;
  const auto search = read_json(out + "/search.json");
  EXPECT_EQ(search["options"]["lambda"], 16.0);  // DISP-LLM's recipe
  EXPECT_EQ(search["options"]["sampling"], "disp");
  const double kept = search["budget"]["kept_fraction"].get<double>();
  EXPECT_LE(kept, 0.5 + 1e-12);
  EXPECT_GT(kept, 0.49);
  // The stored weights are the kept fraction of the original linears.
  const auto header = safetensors_header(out + "/model.safetensors");
  double weights = 0;
  for (const auto& [name, e] : header.items())
    if (name.find("_proj.weight") != std::string::npos && name.find("layers.") != std::string::npos)
      weights += e["shape"][0].get<double>() * e["shape"][1].get<double>();
  EXPECT_NEAR(weights * 2 / search["budget"]["fp16_linear_bytes"].get<double>(), kept, 1e-12);
  // DISP-LLM → GPTQ: the pruned model quantized by the one engine.
  r = run_toga("quantize " + out + " " + dir / "disp_gptq" + " --method gptq --calib 2 --calib-seqlen 64 --threads 1");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(run_toga("eval ppl " + dir / "disp_gptq" + " --dataset tinystories --seqlen 64 --max-windows 2 --threads 1").code, 0);
}

TEST(SearchCli, BadRequestsAreRefusedBeforeAnyWork) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  const std::string out = dir / "q";
  auto r = run_toga("search " + stories260k_path() + " " + out + " --budget 9" + kSmall);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("impossible budget"), std::string::npos) << r.output;
  // --low-bits is --wbits: the spelling reaches the same quantizer and its checks.
  r = run_toga("search " + stories260k_path() + " " + out + " --budget 4.5 --low-bits 9" + kSmall);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("9"), std::string::npos) << r.output;
  r = run_toga("search " + stories260k_path() + " " + out + " --mode joint --budget 0.6" + kSmall);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("impossible budget"), std::string::npos) << r.output;
  r = run_toga("search " + stories260k_path() + " " + out + " --budget 4.5 --fixed-sparsity 0.5" + kSmall);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--fixed-sparsity"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out));
  // A checkpoint already there is continued only when asked.
  write_text_atomically(out + ".search.pt", "not a checkpoint");
  r = run_toga("search " + stories260k_path() + " " + out + " --budget 4.5" + kSmall);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--resume"), std::string::npos) << r.output;
  r = run_toga("search " + stories260k_path() + " " + out + " --budget 4.5 --resume" + kSmall);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find(out + ".search.pt"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out));
}
