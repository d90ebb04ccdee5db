// Shared test helpers: where the shared data lives, scratch directories.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace toga::test {

// ../shared beside the checkout (CI layout), or $TOGA_SHARED.
inline std::string shared_path(const std::string& rel) {
  const char* env = std::getenv("TOGA_SHARED");
  std::string root = env ? env : std::string(TOGA_SOURCE_DIR) + "/../shared";
  return root + "/" + rel;
}

inline std::string stories260k_path() { return shared_path("data/models/stories260K/stories260K.bin"); }
inline std::string stories260k_tokenizer() { return shared_path("data/models/stories260K/tok512.bin"); }
inline std::string smollm2_path() {
  return shared_path("data/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
}

// Whether a missing shared file fails a test rather than skipping it: under CI (the CI variable set
// and not "0"/"false"; .ci/run sets it) a silent skip would hide lost coverage, unless
// TOGA_ALLOW_MISSING_SHARED=1 says that running without ../shared is intended.
inline bool shared_data_required() {
  const char* allow = std::getenv("TOGA_ALLOW_MISSING_SHARED");
  if (allow && std::string(allow) == "1") return false;
  const char* ci = std::getenv("CI");
  if (!ci) return false;
  const std::string v = ci;
  return !v.empty() && v != "0" && v != "false";
}

// The one place a test gives up on shared data: it skips (with a message) when a shared file is
// absent, e.g. outside the CI layout, and fails instead where shared_data_required().
#define TOGA_REQUIRE_FILE(path)                                                                               \
  do {                                                                                                        \
    if (!std::filesystem::exists(path)) {                                                                     \
      if (::toga::test::shared_data_required())                                                               \
        FAIL() << "missing shared file " << (path) << " (CI is set; TOGA_ALLOW_MISSING_SHARED=1 to skip)";    \
      GTEST_SKIP() << "missing shared file " << (path);                                                       \
    }                                                                                                         \
  } while (0)

// A fresh directory under the build tree, removed at the end of the test.
class ScratchDir {
 public:
  ScratchDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "scratch";
    path_ = std::string(TOGA_BINARY_DIR) + "/test-scratch/" + name + "." + std::to_string(::getpid());
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& rel) const { return path_ + "/" + rel; }

 private:
  std::string path_;
};

}  // namespace toga::test
