// Under CI a test whose shared data is missing fails instead of skipping, unless the run says that
// missing data is intended.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <optional>

#include "test_util.h"

namespace {

// Sets (or, with nullopt, unsets) an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, std::optional<std::string> value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) setenv(name, value->c_str(), 1);
    else unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_) setenv(name_, old_->c_str(), 1);
    else unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

void require_a_missing_file() { TOGA_REQUIRE_FILE(std::string("/nonexistent/toga/shared/file")); }

TEST(SharedData, RequiredUnderCiUnlessAllowedMissing) {
  using toga::test::shared_data_required;
  ScopedEnv allow("TOGA_ALLOW_MISSING_SHARED", std::nullopt);
  {
    ScopedEnv ci("CI", std::nullopt);
    EXPECT_FALSE(shared_data_required());
  }
  for (const char* off : {"", "0", "false"}) {
    ScopedEnv ci("CI", std::string(off));
    EXPECT_FALSE(shared_data_required()) << off;
  }
  for (const char* on : {"1", "true"}) {
    ScopedEnv ci("CI", std::string(on));
    EXPECT_TRUE(shared_data_required()) << on;
    EXPECT_FATAL_FAILURE(require_a_missing_file(), "missing shared file /nonexistent/toga/shared/file");
    ScopedEnv allowed("TOGA_ALLOW_MISSING_SHARED", std::string("1"));
    EXPECT_FALSE(shared_data_required()) << on;
  }
}

}  // namespace
