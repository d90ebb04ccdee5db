// Stage 1's quantization rows, reproduced bit for bit by the Plan engine: every configuration of
// docs/RESULTS.md on stories260K is quantized by today's `toga quantize` from its flags, and again
// from the resolved Plan file it emits (`--emit-plan`, then `--plan`); both fingerprints must equal
// the ones the stage-1 binary wrote (tests/quant/data/stage1_code_hashes.json, made by
// scripts/stage1_code_hashes.py at commit 31f3bb0, before the Plan engine existed).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include <torch/version.h>

#include "io/safetensors.h"
#include "test_util.h"
#include "util/atomic_file.h"

using namespace toga;
using namespace toga::test;

namespace {

// FNV-1a 64 over (name, NUL, bytes) of the quantized tensors in name order, as the script computes.
std::string code_fingerprint(const std::string& safetensors) {
  const SafetensorsFile f(safetensors);
  std::vector<const SafetensorsEntry*> entries;
  for (const auto& e : f.header().entries)
    for (const char* suffix : {".weight_packed", ".weight_scale", ".weight_zero_point", ".input_perm"}) {
      const std::string s = suffix;
      if (e.name.size() > s.size() && e.name.compare(e.name.size() - s.size(), s.size(), s) == 0) entries.push_back(&e);
    }
  std::sort(entries.begin(), entries.end(), [](auto* a, auto* b) { return a->name < b->name; });
  uint64_t h = 0xCBF29CE484222325ull;
  auto mix = [&](const uint8_t* p, size_t n) {
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001B3ull;
  };
  for (const auto* e : entries) {
    mix(reinterpret_cast<const uint8_t*>(e->name.c_str()), e->name.size() + 1);
    mix(f.data(*e), e->end - e->begin);
  }
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

// The golden fingerprints are the bytes Debian's libtorch 1.13 (with OpenBLAS) rounds to. Another
// libtorch (the CUDA build's, scripts/build_cuda.sh) sums the statistics and GPTQ's products in
// another order, so there only the flags and the Plan must agree with each other.
constexpr bool kGoldenLibtorch = TORCH_VERSION_MAJOR == 1 && TORCH_VERSION_MINOR == 13;

int run(const std::string& args) {
  return std::system((std::string(TOGA_CLI) + " " + args + " >/dev/null 2>&1").c_str());
}

}  // namespace

TEST(Stage1Regression, EveryResultsRowReproducesFromFlagsAndFromItsPlan) {
  TOGA_REQUIRE_FILE(stories260k_path());
  const auto golden =
      nlohmann::json::parse(read_text_file(std::string(TOGA_SOURCE_DIR) + "/tests/quant/data/stage1_code_hashes.json"));
  std::string calib;
  for (const auto& a : golden.at("calibration")) calib += " " + a.get<std::string>();
  const std::string threads = " --threads " + std::to_string(golden.at("threads").get<int>());
  ScratchDir dir;
  int checked = 0;
  for (const auto& [name, entry] : golden.at("configs").items()) {
    std::string flags;
    for (const auto& a : entry.at("flags")) flags += " " + a.get<std::string>();
    const std::string want = entry.at("fingerprint");
    const std::string a = dir / (name + ".flags"), b = dir / (name + ".plan"), plan = dir / (name + ".json");
    ASSERT_EQ(run("quantize " + stories260k_path() + " " + a + flags + calib + threads + " --emit-plan " + plan), 0)
        << name;
    const std::string from_flags = code_fingerprint(a + "/model.safetensors");
    if (kGoldenLibtorch) EXPECT_EQ(from_flags, want) << name << " from flags";
    ASSERT_EQ(run("quantize " + stories260k_path() + " " + b + " --plan " + plan + calib + threads), 0) << name;
    EXPECT_EQ(code_fingerprint(b + "/model.safetensors"), from_flags) << name << " from its Plan";
    ++checked;
  }
  EXPECT_EQ(checked, 15);
}
