// `toga search` over several processes on loopback, as a user runs it (`toga launch -n N`, or each
// rank started by hand): 2 and 3 processes give the single process's masks and training curve; ranks
// started with different options refuse to run; a killed rank ends the run with a clear error and no
// output, and `--resume` on every rank finishes it exactly as the uninterrupted run.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "cli/cli_util.h"
#include "test_util.h"
#include "util/atomic_file.h"

using namespace toga;
using namespace toga::test;
namespace fs = std::filesystem;

namespace {

// Joint search on stories260K, six windows a step, one window per forward (so every process count
// that divides the batch sums the same per-window gradients).
std::string search_args(const std::string& out, int steps) {
  return "search " + stories260k_path() + " " + out + " --mode joint --budget 0.15 --abits 4 --steps " +
         std::to_string(steps) + " --batch 6 --micro-batch 1 --seqlen 64 --order-windows 4 --calib 2 --calib-seqlen 64 " +
         "--checkpoint-every 5";
}

nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(read_text_file(path)); }

void expect_same_search(const nlohmann::json& a, const nlohmann::json& b) {
  EXPECT_EQ(a["layers"], b["layers"]) << "the same kept and salient channels";
  EXPECT_EQ(a["budget"]["realized_fp16_fraction"], b["budget"]["realized_fp16_fraction"]);
  ASSERT_EQ(a["curve"].size(), b["curve"].size());
  for (size_t i = 0; i < a["curve"].size(); ++i) {
    // The step's CE is a float64 sum over windows in another order: the last bits may differ; the
    // gradients (exact float64 sums of float32 values) do not, so neither do the masks.
    EXPECT_NEAR(a["curve"][i]["ce"].get<double>(), b["curve"][i]["ce"].get<double>(), 1e-12) << "step " << i + 1;
    EXPECT_EQ(a["curve"][i]["budget"], b["curve"][i]["budget"]) << "step " << i + 1;
  }
}

// The child of `parent` whose environment says TOGA_RANK=rank (a rank `toga launch` started).
pid_t launched_rank(pid_t parent, int rank) {
  std::ifstream children("/proc/" + std::to_string(parent) + "/task/" + std::to_string(parent) + "/children");
  pid_t child;
  while (children >> child) {
    std::ifstream envf("/proc/" + std::to_string(child) + "/environ", std::ios::binary);
    const std::string env((std::istreambuf_iterator<char>(envf)), {});
    if (env.find(std::string("TOGA_RANK=") + std::to_string(rank) + '\0') != std::string::npos) return child;
  }
  return -1;
}

}  // namespace

TEST(DistributedSearchCli, TwoAndThreeProcessesFindTheSingleProcessMasks) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  auto r = run_toga(search_args(dir / "one", 8) + " --threads 1");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto one = read_json(dir / "one/search.json");
  EXPECT_EQ(one["processes"], 1);
  for (int n : {2, 3}) {
    const std::string out = dir / ("n" + std::to_string(n));
    r = run_toga("launch -n " + std::to_string(n) + " --no-pin " + search_args(out, 8));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("all-reduce"), std::string::npos) << "progress shows the communication time";
    const auto many = read_json(out + "/search.json");
    EXPECT_EQ(many["processes"], n);
    expect_same_search(one, many);
    // One set of outputs, written by rank 0.
    EXPECT_EQ(r.output.find("[search] done"), r.output.rfind("[search] done"));
  }
}

TEST(DistributedSearchCli, RanksStartedWithDifferentOptionsRefuseToRun) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  const std::string master = "TOGA_MASTER=127.0.0.1:" + std::to_string(20000 + getpid() % 20000);
  const pid_t r0 = spawn_toga(search_args(dir / "out", 8), {"TOGA_WORLD_SIZE=2", "TOGA_RANK=0", master}, dir / "r0.log");
  const pid_t r1 = spawn_toga(search_args(dir / "out", 8) + " --lambda 7", {"TOGA_WORLD_SIZE=2", "TOGA_RANK=1", master},
                              dir / "r1.log");
  EXPECT_NE(wait_for(r1, 120), 0);
  EXPECT_NE(wait_for(r0, 120), 0);
  const std::string log1 = read_text_file(dir / "r1.log"), log0 = read_text_file(dir / "r0.log");
  EXPECT_NE(log1.find("rank 1's search differs from rank 0's"), std::string::npos) << log1;
  EXPECT_NE(log0.find("other search options"), std::string::npos) << log0;
  EXPECT_FALSE(fs::exists(dir / "out"));
}

TEST(DistributedSearchCli, AKilledRankStopsTheRunAndResumingFinishesItAsTheUninterruptedRun) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  const int steps = 60;
  auto r = run_toga(search_args(dir / "uninterrupted", steps) + " --threads 1");
  ASSERT_EQ(r.code, 0) << r.output;

  const std::string out = dir / "out", ckpt = out + ".search.pt";
  const pid_t launcher = spawn_toga("launch -n 2 --no-pin " + search_args(out, steps), {}, dir / "launch.log");
  const auto t0 = std::chrono::steady_clock::now();
  while (!fs::exists(ckpt) && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(120))
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_TRUE(fs::exists(ckpt)) << read_text_file(dir / "launch.log");
  const pid_t rank1 = launched_rank(launcher, 1);
  ASSERT_GT(rank1, 0);
  kill(rank1, SIGKILL);
  const auto tk = std::chrono::steady_clock::now();
  const int code = wait_for(launcher, 120);
  const double stop_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - tk).count();
  const std::string log = read_text_file(dir / "launch.log");
  EXPECT_NE(code, 0) << log;
  EXPECT_NE(code, -1) << "the run stopped by itself";
  EXPECT_LT(stop_seconds, 30) << "a dead peer is noticed at once, not after the timeout";
  EXPECT_NE(log.find("rank 1 was killed by signal 9"), std::string::npos) << log;
  EXPECT_NE(log.find("lost contact with the other processes"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(out)) << "no half-written output";

  r = run_toga("launch -n 2 --no-pin " + search_args(out, steps) + " --resume");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("resumed from"), std::string::npos);
  const auto resumed = read_json(out + "/search.json");
  EXPECT_GT(resumed["resumed_from"].get<int>(), 0);
  EXPECT_LT(resumed["resumed_from"].get<int>(), steps) << "killed before the end";
  expect_same_search(read_json(dir / "uninterrupted/search.json"), resumed);
}

TEST(DistributedSearchCli, LaunchRefusesWhatItCannotShare) {
  auto r = run_toga("launch -n 2 generate model.gguf -p hi");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("does not share its work"), std::string::npos) << r.output;
  r = run_toga("launch -n 0 search a b --budget 4.5");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("at least one process"), std::string::npos) << r.output;
  r = run_toga("search a b --budget 4.5 --world-size 2 --rank 2");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("rank 2 is outside 0..1"), std::string::npos) << r.output;
}
