// Outputs are written to a temporary name beside the target and renamed when complete, so an
// interrupted run never leaves a half-written file or directory behind.
#pragma once

#include <functional>
#include <string>

namespace toga {

// Calls write(tmp_path) then renames tmp_path to path. On exception the temporary is removed.
void write_file_atomically(const std::string& path, const std::function<void(const std::string&)>& write);

// Same for a whole directory: write(tmp_dir) fills a fresh directory that replaces `dir` at the end.
void write_dir_atomically(const std::string& dir, const std::function<void(const std::string&)>& write);

// Convenience: the whole content at once.
void write_text_atomically(const std::string& path, const std::string& content);

std::string read_text_file(const std::string& path);

}  // namespace toga
