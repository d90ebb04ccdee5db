// `toga generate` on the runtime forward writes what the libtorch forward writes (stories260K,
// greedy), and says which forward ran; `toga bench` runs llama-bench's pp / tg tests on both
// engines and writes its JSON (repetitions, mean, sd, the per-operator profile).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "cli/cli_util.h"
#include "test_util.h"
#include "util/atomic_file.h"

using namespace toga;
using namespace toga::test;

namespace {

// stdout of a command, without the stderr lines toga prints ("[generate] ...").
std::string story(const std::string& output) {
  std::string out;
  size_t pos = 0;
  while (pos < output.size()) {
    const size_t end = output.find('\n', pos);
    const std::string line = output.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    if (line.rfind("[generate]", 0) != 0) out += line + "\n";
    if (end == std::string::npos) break;
    pos = end + 1;
  }
  return out;
}

}  // namespace

TEST(BenchCli, GenerateOnTheRuntimeWritesTheLibtorchStory) {
  TOGA_REQUIRE_FILE(stories260k_path());
  const auto runtime = run_toga("generate " + stories260k_path() + " -n 120 --threads 1 --engine runtime");
  const auto torch = run_toga("generate " + stories260k_path() + " -n 120 --threads 1 --engine torch");
  ASSERT_EQ(runtime.code, 0) << runtime.output;
  ASSERT_EQ(torch.code, 0) << torch.output;
  EXPECT_NE(runtime.output.find("[generate] runtime forward"), std::string::npos) << runtime.output;
  EXPECT_NE(torch.output.find("[generate] libtorch forward"), std::string::npos) << torch.output;
  EXPECT_GT(story(runtime.output).size(), 200u);
  EXPECT_EQ(story(runtime.output), story(torch.output));
}

TEST(BenchCli, PromptAndGenerationTestsOnBothEngines) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  for (const std::string engine : {"runtime", "torch"}) {
    const std::string json = dir / (engine + ".json");
    const auto r = run_toga("bench " + stories260k_path() + " -p 64 -n 16 -r 2 --threads 1 --profile --engine " + engine +
                            " --json " + json);
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("| pp64 |"), std::string::npos) << r.output;
    const auto j = nlohmann::json::parse(read_text_file(json));
    EXPECT_EQ(j.at("engine"), engine);
    ASSERT_EQ(j.at("results").size(), 2u);
    for (const auto& res : j.at("results")) {
      EXPECT_EQ(res.at("tokens_per_second").size(), 2u);
      EXPECT_GT(res.at("mean").get<double>(), 0);
    }
    if (engine == "runtime") {
      double total = 0;
      for (const auto& [op, seconds] : j.at("profile").at("tg").items()) total += seconds.get<double>();
      EXPECT_GT(total, 0);
    }
  }
  // Bad input: a runtime bench in bf16 is refused with the reason.
  const auto bad = run_toga("bench " + stories260k_path() + " -p 8 -n 0 --dtype bf16");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("fp32"), std::string::npos) << bad.output;
}
