#include "util/atomic_file.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "util/error.h"

namespace fs = std::filesystem;

namespace toga {

namespace {

std::string temporary_name(const std::string& path) {
  return fmt::format("{}.tmp.{}", path, static_cast<long>(::getpid()));
}

// "out/q/" names the directory out/q: without this its temporary would be created inside it.
std::string without_trailing_slash(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

fs::file_type type_at(const std::string& path) {
  std::error_code ec;
  const auto st = fs::symlink_status(path, ec);
  if (ec && st.type() != fs::file_type::not_found) fail_file(path, "cannot inspect: {}", ec.message());
  return st.type();
}

struct Marker {
  std::string verb;
  std::set<std::string> files;  // the entries toga wrote
};

// What `dir`'s marker says, or nothing when it has no valid marker (then toga did not make it).
std::optional<Marker> read_marker(const std::string& dir) {
  const std::string path = (fs::path(dir) / kOutputMarker).string();
  if (type_at(path) != fs::file_type::regular) return std::nullopt;
  std::ifstream in(path, std::ios::binary);
  const auto j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || j.value("tool", "") != "toga" || !j.contains("files") || !j["files"].is_array())
    return std::nullopt;
  Marker m;
  if (j.contains("verb") && j["verb"].is_string()) m.verb = j["verb"].get<std::string>();
  for (const auto& f : j["files"])
    if (f.is_string()) m.files.insert(f.get<std::string>());
  return m;
}

std::string list_some(const std::vector<std::string>& names) {
  std::string s;
  for (size_t i = 0; i < names.size() && i < 3; ++i) s += (i ? ", " : "") + names[i];
  if (names.size() > 3) s += fmt::format(" and {} more", names.size() - 3);
  return s;
}

void write_marker(const std::string& tmp, const std::string& where, const std::string& verb) {
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(tmp)) files.push_back(e.path().filename().string());
  std::sort(files.begin(), files.end());
  if (std::find(files.begin(), files.end(), kOutputMarker) != files.end())
    fail_file(where, "the output may not contain a file named {} (toga's own marker)", kOutputMarker);
  const nlohmann::ordered_json j = {{"tool", "toga"}, {"verb", verb}, {"version", TOGA_VERSION}, {"files", files}};
  const std::string path = (fs::path(tmp) / kOutputMarker).string();
  std::ofstream out(path, std::ios::binary);
  out << j.dump(2) << "\n";
  out.close();
  if (!out) fail_file(path, "write failed");
}

// rename(2) that fails instead of replacing whatever appeared at `to` meanwhile (a file, or an empty
// directory, which plain rename would replace).
void rename_no_replace(const std::string& from, const std::string& to) {
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return;
  if (errno == EEXIST) fail_file(to, "appeared while toga was writing; nothing was replaced");
  if (errno != EINVAL && errno != ENOSYS) fail_file(to, "cannot rename {} here: {}", from, std::strerror(errno));
  // A filesystem without RENAME_NOREPLACE: check, then rename (racy only against another writer).
  if (type_at(to) != fs::file_type::not_found) fail_file(to, "appeared while toga was writing; nothing was replaced");
  fs::rename(from, to);
}

// Puts the finished directory `tmp` at `dir`, whose old content (already checked) is then removed.
// Exchanging the two is atomic: at every moment `dir` holds either the old output or the new one.
void move_dir_into_place(const std::string& tmp, const std::string& dir) {
  if (type_at(dir) == fs::file_type::not_found) return rename_no_replace(tmp, dir);
  std::error_code ec;
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, dir.c_str(), RENAME_EXCHANGE) == 0) {
    fs::remove_all(tmp, ec);  // now the old output
    return;
  }
  if (errno != EINVAL && errno != ENOSYS) fail_file(dir, "cannot exchange with {}: {}", tmp, std::strerror(errno));
  const std::string old = dir + ".old." + std::to_string(::getpid());
  fs::rename(dir, old);
  try {
    fs::rename(tmp, dir);
  } catch (...) {
    fs::rename(old, dir, ec);
    throw;
  }
  fs::remove_all(old, ec);
}

}  // namespace

void check_output_file(const std::string& path, OnExisting on_existing) {
  switch (type_at(path)) {
    case fs::file_type::not_found:
      return;
    case fs::file_type::regular:
      if (on_existing == OnExisting::kReplace) return;
      fail_file(path, "already exists; pass --force to replace it");
    case fs::file_type::directory:
      fail_file(path, "is a directory; toga writes a file here and will not replace a directory: choose another path");
    default:
      fail_file(path, "exists and is not a regular file; toga will not replace it: choose another path");
  }
}

void check_output_dir(const std::string& dir_arg, OnExisting on_existing) {
  const std::string dir = without_trailing_slash(dir_arg);
  const bool force = on_existing == OnExisting::kReplace;
  switch (type_at(dir)) {
    case fs::file_type::not_found:
      return;
    case fs::file_type::directory:
      break;
    case fs::file_type::symlink:
      fail_file(dir, "is a symbolic link; toga will not replace it: remove it or choose another output path");
    default:
      fail_file(dir, "exists and is not a directory; toga will not replace it: remove it or choose another "
                     "output path");
  }
  std::vector<std::string> entries;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    entries.push_back(it->path().filename().string());
  if (ec) fail_file(dir, "cannot list this directory: {}", ec.message());
  std::sort(entries.begin(), entries.end());
  if (entries.empty()) {
    if (force) return;
    fail_file(dir, "is an existing (empty) directory; pass --force to write the output in its place");
  }
  const auto own = read_marker(dir);
  if (!own)
    fail_file(dir, "is a directory toga did not make (no valid {} in it); toga will not replace it: choose a new "
                   "output path",
              kOutputMarker);
  std::vector<std::string> foreign;
  for (const auto& e : entries)
    if (e != kOutputMarker && !own->files.count(e)) foreign.push_back(e);
  if (!foreign.empty())
    fail_file(dir, "holds files toga did not write ({}); toga will not delete them: move them out or choose another "
                   "output path",
              list_some(foreign));
  if (!force)
    fail_file(dir, "holds an earlier output of toga{}; pass --force to replace it",
              own->verb.empty() ? "" : " " + own->verb);
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

void write_file_atomically(const std::string& path, OnExisting on_existing,
                           const std::function<void(const std::string&)>& write) {
  check_output_file(path, on_existing);
  const std::string tmp = temporary_name(path);
  try {
    write(tmp);
    check_output_file(path, on_existing);  // again: the path may have changed while we worked
    if (on_existing == OnExisting::kRefuse)
      rename_no_replace(tmp, path);
    else
      fs::rename(tmp, path);
  } catch (const fs::filesystem_error& e) {
    std::error_code ec;
    fs::remove(tmp, ec);
    fail_file(path, "cannot write: {}", e.what());
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
}

void write_dir_atomically(const std::string& dir_arg, const OutputDirPolicy& policy,
                          const std::function<void(const std::string&)>& write) {
  const std::string dir = without_trailing_slash(dir_arg);
  check_output_dir(dir, policy.on_existing);
  const std::string tmp = temporary_name(dir);
  std::error_code ec;
  fs::remove_all(tmp, ec);
  try {
    fs::create_directories(tmp);
    write(tmp);
    write_marker(tmp, dir, policy.verb);
    check_output_dir(dir, policy.on_existing);  // again: the path may have changed while we worked
    move_dir_into_place(tmp, dir);
  } catch (const fs::filesystem_error& e) {
    fs::remove_all(tmp, ec);
    fail_file(dir, "cannot write directory: {}", e.what());
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

static void write_text(const std::string& tmp, const std::string& content) {
  std::ofstream out(tmp, std::ios::binary);
  if (!out) fail_file(tmp, "cannot open for writing");
  out << content;
  out.close();
  if (!out) fail_file(tmp, "write failed");
}

void write_text_atomically(const std::string& path, const std::string& content) {
  write_file_atomically(path, [&](const std::string& tmp) { write_text(tmp, content); });
}

void write_text_atomically(const std::string& path, const std::string& content, OnExisting on_existing) {
  write_file_atomically(path, on_existing, [&](const std::string& tmp) { write_text(tmp, content); });
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_file(path, "cannot open for reading");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace toga
