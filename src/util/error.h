// Errors a user can act on: every failure names the file (or input) and the problem.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace toga {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// "PATH: problem" — the one format used for every bad-input error.
template <typename... Args>
[[noreturn]] void fail_file(const std::string& path, fmt::format_string<Args...> f, Args&&... args) {
  throw Error(path + ": " + fmt::format(f, std::forward<Args>(args)...));
}

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace toga
