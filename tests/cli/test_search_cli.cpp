// `toga search --mode quant` as a user drives it on stories260K: a checkpoint whose salient sets are
// the search's, a realized budget that meets the target, the budget in either unit, a resumed run
// that reproduces the finished one, and bad requests refused before any work.
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
  r = run_toga("search " + stories260k_path() + " " + out + " --budget 4.5 --mode joint" + kSmall);
  EXPECT_NE(r.code, 0);
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
