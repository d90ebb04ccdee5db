#include "util/atomic_file.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "util/error.h"

namespace fs = std::filesystem;

namespace toga {

static std::string temporary_name(const std::string& path) {
  return fmt::format("{}.tmp.{}", path, static_cast<long>(::getpid()));
}

void write_file_atomically(const std::string& path, const std::function<void(const std::string&)>& write) {
  const std::string tmp = temporary_name(path);
  try {
    write(tmp);
    fs::rename(tmp, path);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
}

void write_dir_atomically(const std::string& dir, const std::function<void(const std::string&)>& write) {
  const std::string tmp = temporary_name(dir);
  std::error_code ec;
  fs::remove_all(tmp, ec);
  try {
    fs::create_directories(tmp);
    write(tmp);
    const std::string old = dir + ".old." + std::to_string(::getpid());
    const bool had_old = fs::exists(dir);
    if (had_old) fs::rename(dir, old);
    fs::rename(tmp, dir);
    if (had_old) fs::remove_all(old, ec);
  } catch (const fs::filesystem_error& e) {
    fs::remove_all(tmp, ec);
    fail_file(dir, "cannot write directory: {}", e.what());
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

void write_text_atomically(const std::string& path, const std::string& content) {
  write_file_atomically(path, [&](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary);
    if (!out) fail_file(tmp, "cannot open for writing");
    out << content;
    out.close();
    if (!out) fail_file(tmp, "write failed");
  });
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_file(path, "cannot open for reading");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace toga
