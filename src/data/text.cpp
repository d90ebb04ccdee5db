#include "data/text.h"

#include <fstream>

#include <nlohmann/json.hpp>

#include "util/error.h"

namespace toga {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_file(path, "cannot open for reading");
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail_file(path, "read failed");
  return data;
}

static bool only_whitespace(const std::string& s, size_t b, size_t e) {
  for (size_t i = b; i < e; ++i)
    if (s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r' && s[i] != '\f' && s[i] != '\v') return false;
  return true;
}

std::string gptq_wikitext_text(const std::string& raw_path) {
  const std::string raw = read_text(raw_path);
  if (raw.empty()) fail_file(raw_path, "empty file");
  std::string out;
  out.reserve(raw.size() + raw.size() / 8);
  bool first = true;
  for (size_t b = 0; b < raw.size();) {
    size_t e = raw.find('\n', b);
    e = e == std::string::npos ? raw.size() : e + 1;  // the row keeps its newline
    if (!first) out += "\n\n";
    first = false;
    if (!only_whitespace(raw, b, e)) out.append(raw, b, e - b);
    b = e;
  }
  return out;
}

std::string jsonl_text(const std::string& path, const std::string& field, const std::string& separator,
                       size_t max_docs) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_file(path, "cannot open for reading");
  std::string out, line;
  size_t n = 0, line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty() || (line.size() == 1 && line[0] == '\r')) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      fail_file(path, "line {}: invalid JSON: {}", line_no, e.what());
    }
    if (!j.is_object() || !j.contains(field) || !j[field].is_string())
      fail_file(path, "line {}: no string field \"{}\"", line_no, field);
    if (n > 0) out += separator;
    out += j[field].get<std::string>();
    if (++n == max_docs) break;
  }
  if (n == 0) fail_file(path, "no documents");
  return out;
}

}  // namespace toga
