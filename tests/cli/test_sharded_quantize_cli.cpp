// `toga quantize` layer-sharded over several processes on loopback (dist/layer_shards.h), as a user
// runs it: `toga launch -n N quantize ...` writes the single process's checkpoint byte for byte;
// ranks started with different options refuse to run; methods that change every block at once are
// refused.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "cli/cli_util.h"
#include "test_util.h"
#include "util/atomic_file.h"

using namespace toga;
using namespace toga::test;

namespace {

const std::string kAtom = " --method atom --group-size 32 --act-group-size 32 --calib 4 --calib-seqlen 64";

nlohmann::json quantization_config(const std::string& dir) {
  auto c = nlohmann::json::parse(read_text_file(dir + "/config.json"))["quantization_config"];
  c["base_model"].erase("processes");
  return c;
}

}  // namespace

TEST(ShardedQuantizeCli, TwoAndThreeProcessesWriteTheSingleProcessCheckpoint) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  const std::string one = dir / "one";
  auto r = run_toga("quantize " + stories260k_path() + " " + one + kAtom);
  ASSERT_EQ(r.code, 0) << r.output;
  for (int n : {2, 3}) {
    SCOPED_TRACE(n);
    const std::string out = dir / ("n" + std::to_string(n));
    r = run_toga("launch -n " + std::to_string(n) + " quantize " + stories260k_path() + " " + out + kAtom);
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("rank 1 of " + std::to_string(n) + ": blocks"), std::string::npos) << r.output;
    EXPECT_TRUE(read_text_file(one + "/model.safetensors") == read_text_file(out + "/model.safetensors"))
        << "every tensor, bit for bit";
    EXPECT_EQ(quantization_config(one), quantization_config(out));
  }
}

TEST(ShardedQuantizeCli, RanksMustAgreeAndMethodsMustBeShardable) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  // Rank 1 draws other calibration windows: both ranks stop with an error, nothing is written.
  const std::string master = "TOGA_MASTER=127.0.0.1:" + std::to_string(20000 + (getpid() + 7) % 20000);
  const std::string args = "quantize " + stories260k_path() + " " + dir / "out" + kAtom;
  const pid_t r0 = spawn_toga(args, {"TOGA_WORLD_SIZE=2", "TOGA_RANK=0", master}, dir / "r0.log");
  const pid_t r1 = spawn_toga(args + " --seed 5", {"TOGA_WORLD_SIZE=2", "TOGA_RANK=1", master}, dir / "r1.log");
  EXPECT_NE(wait_for(r1, 120), 0);
  EXPECT_NE(wait_for(r0, 120), 0);
  const std::string log1 = read_text_file(dir / "r1.log"), log0 = read_text_file(dir / "r0.log");
  EXPECT_NE(log1.find("rank 1's quantization differs from rank 0's"), std::string::npos) << log1;
  EXPECT_NE(log0.find("other quantization options"), std::string::npos) << log0;
  EXPECT_FALSE(std::filesystem::exists(dir / "out"));
  // Methods that change every block at once, and more processes than blocks, are refused.
  auto r = run_toga("launch -n 2 quantize " + stories260k_path() + " " + dir / "resq" +
                    " --method resq --calib 2 --calib-seqlen 64");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("cannot be layer-sharded"), std::string::npos) << r.output;
  r = run_toga("launch -n 2 quantize " + stories260k_path() + " " + dir / "rot" + " --method rtn --rotate hadamard");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("cannot be layer-sharded"), std::string::npos) << r.output;
  r = run_toga("launch -n 9 quantize " + stories260k_path() + " " + dir / "many" + " --method rtn");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("a block per process"), std::string::npos) << r.output;
  for (const char* out : {"resq", "rot", "many"}) EXPECT_FALSE(std::filesystem::exists(dir / out)) << out;
}
