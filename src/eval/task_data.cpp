#include "eval/task_data.h"

#include <bzlib.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "data/text.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace toga {

namespace {

// A document as the harness's task config sees it: doc_to_text, doc_to_choice, the gold index.
// WinoGrande puts the choices in the context ("multiple input") and scores a shared target.
struct Doc {
  std::string id, subject;
  std::string query;                 // doc_to_text (unused for multiple-input docs)
  std::vector<std::string> choices;  // doc_to_choice
  int label = -1;
  bool multiple_input = false;
  std::string target;                // multiple-input docs: the continuation without the delimiter
};

const char* const kTargetDelimiter = " ";
const char* const kFewshotDelimiter = "\n\n";

std::string fewshot_example(const Doc& d) {
  if (d.multiple_input) return d.choices.at(d.label) + kTargetDelimiter + d.target;
  return d.query + kTargetDelimiter + d.choices.at(d.label);
}

TaskItem make_item(const Doc& d, int64_t index, const std::string& prefix) {
  TaskItem it;
  it.id = d.id;
  it.doc_index = index;
  it.subject = d.subject;
  it.choices = d.choices;
  it.label = d.label;
  for (const auto& c : d.choices) {
    if (d.multiple_input)
      it.requests.push_back({prefix + c, kTargetDelimiter + d.target});
    else
      it.requests.push_back({prefix + d.query, kTargetDelimiter + c});
  }
  return it;
}

// Items of a task whose few-shot examples come from the evaluated set itself (no few-shot split is
// shipped): k others drawn at random per item, as the harness does when the few-shot split is the
// test split (its draws come from Python's random and are not reproduced here).
std::vector<TaskItem> items_from_docs(const std::vector<Doc>& docs, const TaskLoadOptions& opts) {
  const int64_t n = opts.limit > 0 ? std::min<int64_t>(opts.limit, docs.size()) : int64_t(docs.size());
  if (opts.fewshot > 0 && size_t(opts.fewshot) >= docs.size())
    fail("--fewshot {} needs more than {} documents", opts.fewshot, docs.size());
  std::mt19937_64 rng(opts.seed);
  std::vector<TaskItem> items;
  items.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    std::string prefix;
    if (opts.fewshot > 0) {
      std::set<size_t> picked;
      std::uniform_int_distribution<size_t> pick(0, docs.size() - 1);
      while (int(picked.size()) < opts.fewshot) {
        const size_t j = pick(rng);
        if (j != size_t(i)) picked.insert(j);
      }
      for (size_t j : picked) prefix += fewshot_example(docs[j]) + kFewshotDelimiter;
    }
    items.push_back(make_item(docs[i], i, prefix));
  }
  return items;
}

// Calls fn(line_number, json) for every non-empty line of a JSONL file.
template <typename Fn>
void for_each_jsonl(const std::string& path, Fn fn) {
  const std::string text = read_text(path);
  std::istringstream in(text);
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (python_strip(line).empty()) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      fail_file(path, "line {}: not valid JSON ({})", lineno, e.what());
    }
    if (!j.is_object()) fail_file(path, "line {}: expected a JSON object", lineno);
    try {
      fn(lineno, j);
    } catch (const nlohmann::json::exception& e) {
      fail_file(path, "line {}: {}", lineno, e.what());
    }
  }
}

const nlohmann::json& field(const nlohmann::json& j, const char* key, const std::string& path, int64_t lineno) {
  auto it = j.find(key);
  if (it == j.end()) fail_file(path, "line {}: missing field \"{}\"", lineno, key);
  return *it;
}

std::string string_field(const nlohmann::json& j, const char* key, const std::string& path, int64_t lineno) {
  const auto& v = field(j, key, path, lineno);
  if (!v.is_string()) fail_file(path, "line {}: field \"{}\" must be a string", lineno, key);
  return v.get<std::string>();
}

// Decodes one code point at s[i] (s is valid UTF-8: JSON parsing and the files guarantee it);
// returns its byte length.
size_t decode_utf8(const std::string& s, size_t i, uint32_t& cp) {
  const auto c = static_cast<unsigned char>(s[i]);
  size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
  if (i + len > s.size()) len = 1;
  cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
  for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  return len;
}

bool python_isspace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

// Byte offsets [begin, end) of the text left after Python's strip().
std::pair<size_t, size_t> strip_bounds(const std::string& s, bool left) {
  size_t b = 0;
  if (left) {
    while (b < s.size()) {
      uint32_t cp;
      const size_t n = decode_utf8(s, b, cp);
      if (!python_isspace(cp)) break;
      b += n;
    }
  }
  // Scan forward so multi-byte characters are decoded whole; remember the end of the last non-space.
  size_t e = b, i = b;
  while (i < s.size()) {
    uint32_t cp;
    const size_t n = decode_utf8(s, i, cp);
    i += n;
    if (!python_isspace(cp)) e = i;
  }
  return {b, e};
}

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  // One left-to-right pass over the original text, as Python's str.replace does.
  std::string out;
  size_t pos = 0;
  for (;;) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    out.append(s, pos, hit - pos).append(to);
    pos = hit + from.size();
  }
  out.append(s, pos, std::string::npos);
  s = std::move(out);
}

}  // namespace

std::string python_strip(const std::string& s) {
  const auto [b, e] = strip_bounds(s, true);
  return s.substr(b, e - b);
}

std::string python_rstrip(const std::string& s) {
  const auto [b, e] = strip_bounds(s, false);
  return s.substr(0, e);
}

int64_t utf8_length(const std::string& s) {
  int64_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string hellaswag_preprocess(const std::string& text) {
  std::string t = python_strip(text);
  replace_all(t, " [title]", ". ");
  // re.sub(r"\[.*?\]", "", t): shortest bracketed runs, without crossing a newline.
  std::string out;
  size_t i = 0;
  while (i < t.size()) {
    if (t[i] == '[') {
      size_t j = i + 1;
      while (j < t.size() && t[j] != ']' && t[j] != '\n') ++j;
      if (j < t.size() && t[j] == ']') {
        i = j + 1;
        continue;
      }
    }
    out += t[i++];
  }
  replace_all(out, "  ", " ");
  return out;
}

std::string read_bz2(const std::string& path) {
  const std::string packed = read_text(path);
  bz_stream strm{};
  if (BZ2_bzDecompressInit(&strm, 0, 0) != BZ_OK) fail_file(path, "cannot initialise bzip2 decompression");
  std::string out;
  std::vector<char> buf(1 << 20);
  strm.next_in = const_cast<char*>(packed.data());
  strm.avail_in = static_cast<unsigned>(packed.size());
  int rc = BZ_OK;
  for (;;) {
    strm.next_out = buf.data();
    strm.avail_out = static_cast<unsigned>(buf.size());
    rc = BZ2_bzDecompress(&strm);
    out.append(buf.data(), buf.size() - strm.avail_out);
    if (rc == BZ_STREAM_END) {
      // Concatenated streams (as pbzip2 writes) continue after the end of the first.
      if (strm.avail_in == 0) break;
      char* next = strm.next_in;
      const unsigned left = strm.avail_in;
      BZ2_bzDecompressEnd(&strm);
      strm = bz_stream{};
      if (BZ2_bzDecompressInit(&strm, 0, 0) != BZ_OK) fail_file(path, "cannot initialise bzip2 decompression");
      strm.next_in = next;
      strm.avail_in = left;
      continue;
    }
    if (rc != BZ_OK) {
      BZ2_bzDecompressEnd(&strm);
      fail_file(path, "corrupt bzip2 data (libbz2 error {})", rc);
    }
    if (strm.avail_in == 0 && strm.avail_out != 0) {
      BZ2_bzDecompressEnd(&strm);
      fail_file(path, "truncated bzip2 data");
    }
  }
  BZ2_bzDecompressEnd(&strm);
  return out;
}

std::vector<std::vector<std::string>> parse_csv(const std::string& text, const std::string& path) {
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> row;
  std::string cell;
  bool quoted = false, in_row = false;
  int64_t line = 1, row_line = 1;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          cell += '"';
          ++i;
        } else {
          quoted = false;
        }
      } else {
        if (c == '\n') ++line;
        cell += c;
      }
      continue;
    }
    if (!in_row) {
      row_line = line;
      in_row = true;
    }
    if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      row.push_back(std::move(cell));
      cell.clear();
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      row.push_back(std::move(cell));
      cell.clear();
      rows.push_back(std::move(row));
      row.clear();
      in_row = false;
      ++line;
    } else {
      cell += c;
    }
  }
  if (quoted) fail_file(path, "line {}: unterminated quoted field", row_line);
  if (in_row) {
    row.push_back(std::move(cell));
    rows.push_back(std::move(row));
  }
  // Python's csv yields no row for an empty line.
  rows.erase(std::remove_if(rows.begin(), rows.end(),
                            [](const std::vector<std::string>& r) { return r.size() == 1 && r[0].empty(); }),
             rows.end());
  return rows;
}

const std::vector<std::string>& standard_task_names() {
  static const std::vector<std::string> names = {"arc_easy", "arc_challenge", "boolq", "hellaswag", "winogrande", "mmlu"};
  return names;
}

std::string mmlu_category(const std::string& subject) {
  static const std::map<std::string, std::string> cat = [] {
    std::map<std::string, std::string> m;
    for (const char* s : {"formal_logic", "high_school_european_history", "high_school_us_history",
                          "high_school_world_history", "international_law", "jurisprudence", "logical_fallacies",
                          "moral_disputes", "moral_scenarios", "philosophy", "prehistory", "professional_law",
                          "world_religions"})
      m[s] = "humanities";
    for (const char* s : {"abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
                          "college_computer_science", "college_mathematics", "college_physics", "computer_security",
                          "conceptual_physics", "electrical_engineering", "elementary_mathematics",
                          "high_school_biology", "high_school_chemistry", "high_school_computer_science",
                          "high_school_mathematics", "high_school_physics", "high_school_statistics",
                          "machine_learning"})
      m[s] = "stem";
    for (const char* s : {"econometrics", "high_school_geography", "high_school_government_and_politics",
                          "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology",
                          "human_sexuality", "professional_psychology", "public_relations", "security_studies",
                          "sociology", "us_foreign_policy"})
      m[s] = "social_sciences";
    for (const char* s : {"business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging",
                          "management", "marketing", "medical_genetics", "miscellaneous", "nutrition",
                          "professional_accounting", "professional_medicine", "virology"})
      m[s] = "other";
    return m;
  }();
  auto it = cat.find(subject);
  return it == cat.end() ? "other" : it->second;
}

Task load_arc(const std::string& path, const std::string& name, const TaskLoadOptions& opts) {
  std::vector<Doc> docs;
  for_each_jsonl(path, [&](int64_t ln, const nlohmann::json& j) {
    Doc d;
    d.id = j.value("id", std::to_string(ln));
    const auto& q = field(j, "question", path, ln);
    if (!q.is_object()) fail_file(path, "line {}: \"question\" must be an object with stem and choices", ln);
    d.query = "Question: " + string_field(q, "stem", path, ln) + "\nAnswer:";
    const auto& ch = field(q, "choices", path, ln);
    if (!ch.is_array() || ch.empty()) fail_file(path, "line {}: \"choices\" must be a non-empty array", ln);
    const std::string key = string_field(j, "answerKey", path, ln);
    for (const auto& c : ch) {
      if (!c.is_object()) fail_file(path, "line {}: each choice must be an object with text and label", ln);
      if (string_field(c, "label", path, ln) == key) d.label = int(d.choices.size());
      d.choices.push_back(string_field(c, "text", path, ln));
    }
    if (d.label < 0) fail_file(path, "line {}: answerKey \"{}\" is not one of the choice labels", ln, key);
    docs.push_back(std::move(d));
  });
  Task t{name, path, /*reports_acc_norm=*/true, items_from_docs(docs, opts)};
  return t;
}

Task load_boolq(const std::string& path, const TaskLoadOptions& opts) {
  std::vector<Doc> docs;
  for_each_jsonl(path, [&](int64_t ln, const nlohmann::json& j) {
    Doc d;
    d.id = j.contains("idx") ? j["idx"].dump() : std::to_string(ln);
    d.query = string_field(j, "passage", path, ln) + "\nQuestion: " + string_field(j, "question", path, ln) + "?\nAnswer:";
    d.choices = {"no", "yes"};
    const auto& l = field(j, "label", path, ln);
    // The shipped SuperGLUE layout writes the label as the string "true"/"false".
    if (l.is_boolean()) d.label = l.get<bool>() ? 1 : 0;
    else if (l.is_string() && (l == "true" || l == "True")) d.label = 1;
    else if (l.is_string() && (l == "false" || l == "False")) d.label = 0;
    else if (l.is_number_integer() && (l == 0 || l == 1)) d.label = l.get<int>();
    else fail_file(path, "line {}: label must be true/false, got {}", ln, l.dump());
    docs.push_back(std::move(d));
  });
  return Task{"boolq", path, false, items_from_docs(docs, opts)};
}

Task load_hellaswag(const std::string& bz2_path, const TaskLoadOptions& opts) {
  const std::string text = read_bz2(bz2_path);
  std::vector<std::string> lines;
  {
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      lines.push_back(std::move(line));
    }
  }
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  if (lines.size() % 6 != 0)
    fail_file(bz2_path, "{} lines: the layout is 6 lines per item (context, label, four endings)", lines.size());
  std::vector<Doc> docs;
  for (size_t i = 0; i < lines.size(); i += 6) {
    Doc d;
    d.id = std::to_string(i / 6);
    // The file already holds "activity_label: ctx" cleaned of bracket markers; preprocess() is
    // applied again as the harness applies it to its input (a no-op on all but a few lines).
    d.query = hellaswag_preprocess(lines[i]);
    const std::string& l = lines[i + 1];
    if (l.size() != 1 || l[0] < '0' || l[0] > '3')
      fail_file(bz2_path, "line {}: gold label must be 0..3, got \"{}\"", i + 2, l);
    d.label = l[0] - '0';
    for (int k = 0; k < 4; ++k) d.choices.push_back(hellaswag_preprocess(lines[i + 2 + k]));
    docs.push_back(std::move(d));
  }
  return Task{"hellaswag", bz2_path, true, items_from_docs(docs, opts)};
}

Task load_winogrande(const std::string& jsonl_path, const std::string& labels_path, const TaskLoadOptions& opts) {
  std::vector<std::string> labels;
  if (!labels_path.empty() && fs::exists(labels_path)) {
    std::istringstream in(read_text(labels_path));
    std::string line;
    while (std::getline(in, line)) {
      line = python_strip(line);
      if (!line.empty()) labels.push_back(line);
    }
  }
  std::vector<Doc> docs;
  for_each_jsonl(jsonl_path, [&](int64_t ln, const nlohmann::json& j) {
    Doc d;
    d.id = j.value("qID", std::to_string(ln));
    const std::string sentence = string_field(j, "sentence", jsonl_path, ln);
    const size_t blank = sentence.find('_');
    if (blank == std::string::npos) fail_file(jsonl_path, "line {}: sentence has no \"_\" blank", ln);
    std::string answer = j.contains("answer") ? j["answer"].is_string() ? j["answer"].get<std::string>()
                                                                          : j["answer"].dump()
                                              : "";
    const size_t k = docs.size();
    if (k < labels.size()) {
      if (!answer.empty() && answer != labels[k])
        fail_file(labels_path, "line {}: label {} disagrees with {} line {} (answer {})", k + 1, labels[k],
                  jsonl_path, ln, answer);
      answer = labels[k];
    }
    if (answer != "1" && answer != "2")
      fail_file(jsonl_path, "line {}: answer must be \"1\" or \"2\" (from the record or the labels file), got \"{}\"", ln,
                answer);
    d.label = answer == "1" ? 0 : 1;
    d.multiple_input = true;
    // Partial scoring: each option completes the prefix; the text after the blank is scored.
    for (const char* opt : {"option1", "option2"})
      d.choices.push_back(sentence.substr(0, blank) + string_field(j, opt, jsonl_path, ln));
    d.target = python_strip(sentence.substr(blank + 1));
    docs.push_back(std::move(d));
  });
  if (!labels.empty() && labels.size() != docs.size())
    fail_file(labels_path, "{} labels for {} records in {}", labels.size(), docs.size(), jsonl_path);
  return Task{"winogrande", jsonl_path, false, items_from_docs(docs, opts)};
}

namespace {

std::vector<Doc> mmlu_docs(const std::string& path, const std::string& subject) {
  const auto rows = parse_csv(read_text(path), path);
  std::vector<Doc> docs;
  for (size_t r = 0; r < rows.size(); ++r) {
    const auto& row = rows[r];
    if (row.size() != 6)
      fail_file(path, "row {}: expected 6 fields (question, A, B, C, D, answer), got {}", r + 1, row.size());
    Doc d;
    d.id = subject + "/" + std::to_string(r);
    d.subject = subject;
    d.query = python_strip(row[0]) + "\nA. " + row[1] + "\nB. " + row[2] + "\nC. " + row[3] + "\nD. " + row[4] +
              "\nAnswer:";
    d.choices = {"A", "B", "C", "D"};
    const std::string a = python_strip(row[5]);
    if (a.size() != 1 || a[0] < 'A' || a[0] > 'D') fail_file(path, "row {}: answer must be A-D, got \"{}\"", r + 1, a);
    d.label = a[0] - 'A';
    docs.push_back(std::move(d));
  }
  return docs;
}

}  // namespace

Task load_mmlu(const std::string& dir, const TaskLoadOptions& opts) {
  std::vector<std::string> subjects;
  const std::string suffix = "_test.csv";
  if (!fs::is_directory(dir + "/test")) fail_file(dir, "no test/ directory of MMLU CSV files");
  for (const auto& e : fs::directory_iterator(dir + "/test")) {
    const std::string f = e.path().filename().string();
    if (f.size() > suffix.size() && f.compare(f.size() - suffix.size(), suffix.size(), suffix) == 0)
      subjects.push_back(f.substr(0, f.size() - suffix.size()));
  }
  std::sort(subjects.begin(), subjects.end());
  if (subjects.empty()) fail_file(dir + "/test", "no *_test.csv files");
  Task t{"mmlu", dir, false, {}};
  for (const auto& s : subjects) {
    const auto test = mmlu_docs(dir + "/test/" + s + "_test.csv", s);
    std::string prefix = "The following are multiple choice questions (with answers) about ";
    for (char c : s) prefix += c == '_' ? ' ' : c;
    prefix += ".\n\n";
    if (opts.fewshot > 0) {
      // The harness's MMLU few-shot sampler takes the first k of the dev split.
      const std::string dev_path = dir + "/dev/" + s + "_dev.csv";
      const auto dev = mmlu_docs(dev_path, s);
      if (size_t(opts.fewshot) > dev.size())
        fail_file(dev_path, "--fewshot {} but only {} dev examples", opts.fewshot, dev.size());
      for (int k = 0; k < opts.fewshot; ++k) prefix += fewshot_example(dev[k]) + kFewshotDelimiter;
    }
    const int64_t n = opts.limit > 0 ? std::min<int64_t>(opts.limit, test.size()) : int64_t(test.size());
    for (int64_t i = 0; i < n; ++i) t.items.push_back(make_item(test[i], i, prefix));
  }
  return t;
}

Task load_generic_jsonl(const std::string& path, const TaskLoadOptions& opts) {
  std::vector<Doc> docs;
  for_each_jsonl(path, [&](int64_t ln, const nlohmann::json& j) {
    Doc d;
    d.id = j.contains("id") ? (j["id"].is_string() ? j["id"].get<std::string>() : j["id"].dump()) : std::to_string(ln);
    d.query = string_field(j, "context", path, ln);
    const auto& ch = field(j, "choices", path, ln);
    if (!ch.is_array() || ch.size() < 2) fail_file(path, "line {}: \"choices\" must be an array of at least 2 strings", ln);
    for (const auto& c : ch) {
      if (!c.is_string()) fail_file(path, "line {}: every choice must be a string", ln);
      d.choices.push_back(c.get<std::string>());
    }
    const auto& l = field(j, "label", path, ln);
    if (!l.is_number_integer() || l.get<int64_t>() < 0 || l.get<int64_t>() >= int64_t(d.choices.size()))
      fail_file(path, "line {}: \"label\" must be an integer index into choices (0..{}), got {}", ln,
                d.choices.size() - 1, l.dump());
    d.label = l.get<int>();
    docs.push_back(std::move(d));
  });
  if (docs.empty()) fail_file(path, "no items");
  return Task{"file:" + path, path, true, items_from_docs(docs, opts)};
}

Task load_task(const std::string& name, const std::string& data_dir, const TaskLoadOptions& opts) {
  const std::string t = data_dir + "/tasks";
  if (name.rfind("file:", 0) == 0) return load_generic_jsonl(name.substr(5), opts);
  if (name == "arc_easy") return load_arc(t + "/arc/ARC-Easy-Test.jsonl", name, opts);
  if (name == "arc_challenge") return load_arc(t + "/arc/ARC-Challenge-Test.jsonl", name, opts);
  if (name == "boolq") return load_boolq(t + "/boolq/val.jsonl", opts);
  if (name == "hellaswag") return load_hellaswag(t + "/hellaswag/hellaswag_val_full.txt.bz2", opts);
  if (name == "winogrande") return load_winogrande(t + "/winogrande/dev.jsonl", t + "/winogrande/dev-labels.lst", opts);
  if (name == "mmlu") return load_mmlu(t + "/mmlu", opts);
  fail("unknown task '{}' (use arc_easy, arc_challenge, boolq, hellaswag, winogrande, mmlu, all, or file:PATH)", name);
}

}  // namespace toga
