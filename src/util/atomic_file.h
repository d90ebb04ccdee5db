// Outputs are written to a temporary name beside the target and renamed when complete, so an
// interrupted run never leaves a half-written file or directory behind.
//
// A user-facing output never replaces what the user did not ask to lose. The rule (README, Notes):
// an output goes to a new path; with OnExisting::kReplace (the verbs' --force) it may replace an
// earlier output of the same kind: a regular file for a file output, a directory toga made (or an
// empty one) for a directory output. Anything else at the path is refused with an error naming it,
// and nothing is touched.
#pragma once

#include <functional>
#include <string>

namespace toga {

enum class OnExisting { kRefuse, kReplace };

// Every directory toga writes holds this file: JSON {"tool": "toga", "verb", "version", "files":
// [the entries toga wrote]}. It is how toga recognizes its own output, and only a directory that
// holds nothing beyond those entries counts as toga's.
constexpr const char* kOutputMarker = ".toga-output";

struct OutputDirPolicy {
  std::string verb;  // recorded in the marker: which command made the directory
  OnExisting on_existing = OnExisting::kRefuse;
};

// Throw toga::Error ("PATH: why") when writing `path` under `on_existing` would be refused; verbs
// call them before the work so that a refusal costs nothing. The writers below check again.
void check_output_file(const std::string& path, OnExisting on_existing);
void check_output_dir(const std::string& dir, OnExisting on_existing);

// Calls write(tmp_path) then renames tmp_path to path. On exception the temporary is removed. This
// form replaces a file at `path`: for files the caller owns (inside a temporary directory, tests).
void write_file_atomically(const std::string& path, const std::function<void(const std::string&)>& write);
// The same for a user-facing output: what is at `path` is replaced only as check_output_file allows.
void write_file_atomically(const std::string& path, OnExisting on_existing,
                           const std::function<void(const std::string&)>& write);

// Same for a whole directory: write(tmp_dir) fills a fresh directory that takes the place of `dir`
// at the end (exchanged atomically where the filesystem can), plus the marker. What is at `dir` is
// replaced only as check_output_dir allows, checked before writing and again before the exchange.
void write_dir_atomically(const std::string& dir, const OutputDirPolicy& policy,
                          const std::function<void(const std::string&)>& write);

// Convenience: the whole content at once.
void write_text_atomically(const std::string& path, const std::string& content);
void write_text_atomically(const std::string& path, const std::string& content, OnExisting on_existing);

std::string read_text_file(const std::string& path);

}  // namespace toga
