// A deterministic, varied set of test strings for tokenizer cross-checks: real text (WikiText-2,
// ARC, BoolQ, TinyStories), digit runs, white-space runs, contractions, Unicode (CJK, emoji,
// combining marks, other scripts), and strings with control tokens written in them.
#pragma once

#include <nlohmann/json.hpp>

#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "../test_util.h"

namespace toga::test {

inline std::vector<std::string> read_lines(const std::string& path, size_t max_lines) {
  std::vector<std::string> out;
  std::ifstream in(path, std::ios::binary);
  std::string line;
  while (out.size() < max_lines && std::getline(in, line)) out.push_back(line);
  return out;
}

struct TestStringOptions {
  std::vector<std::string> control_tokens;  // written into some strings
  bool include_u2581 = true;                // SentencePiece treats U+2581 as a space
};

inline std::vector<std::string> tokenizer_test_strings(const TestStringOptions& opt = {}) {
  std::vector<std::string> out;
  std::mt19937 rng(1234);
  auto pick = [&](const std::vector<std::string>& v) { return v[rng() % v.size()]; };

  // Real text. Lines are taken with and without their newline.
  const auto wiki = read_lines(shared_path("data/text/wikitext-2-raw/wiki.test.raw"), 100000);
  size_t taken = 0;
  for (size_t i = 0; i < wiki.size() && taken < 700; i += 5) {
    if (wiki[i].empty()) continue;
    out.push_back(taken % 2 ? wiki[i] + "\n" : wiki[i]);
    ++taken;
  }
  for (const auto& l : read_lines(shared_path("data/tasks/arc/ARC-Challenge-Test.jsonl"), 350)) {
    const auto j = nlohmann::json::parse(l);
    std::string s = "Question: " + j["question"]["stem"].get<std::string>() + "\nAnswer:";
    for (const auto& c : j["question"]["choices"]) s += " " + c["text"].get<std::string>();
    out.push_back(s);
  }
  size_t k = 0;
  for (const auto& l : read_lines(shared_path("data/tasks/boolq/val.jsonl"), 300)) {
    const auto j = nlohmann::json::parse(l);
    out.push_back(j["question"].get<std::string>() + "?");
    if (k++ % 3 == 0) out.push_back(j["passage"].get<std::string>() + "\nQuestion: " + j["question"].get<std::string>() + "?\nAnswer:");
  }
  const auto stories = read_lines(shared_path("data/text/tinystories/TinyStories-valid-first-1000.txt"), 400);
  for (size_t i = 0; i < stories.size(); i += 2)
    if (!stories[i].empty()) out.push_back(stories[i]);

  // Digits.
  for (int i = 0; i < 150; ++i) {
    std::string s;
    const int len = 1 + static_cast<int>(rng() % 14);
    for (int d = 0; d < len; ++d) s += static_cast<char>('0' + rng() % 10);
    static const std::vector<std::string> wraps = {"{}", " {}", "x{}y", "{} apples", "$ {}.50", "1,{}", "{}%",
                                                   "v{}.{}", "  {}  ", "\n{}\n", "year {}", "{}th"};
    std::string w = pick(wraps);
    for (size_t p; (p = w.find("{}")) != std::string::npos;) w.replace(p, 2, s);
    out.push_back(w);
  }
  for (const char* s : {"3.14159", "1e-5", "0x1F", "2,000,000", "٣٤٥", "²³", "½ cup", "Ⅻ", "१२३", "１２３"})
    out.push_back(s);

  // White space.
  static const std::vector<std::string> ws = {" ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", " \n", "\t\t", "\xC2\xA0",
                                              "\xE3\x80\x80", "\xE2\x80\xA8", "\r", "\x0B", "\x0C", " \t \n"};
  static const std::vector<std::string> words = {"hello", "world", "the", "A", "don't", "(x)", "!!", "caf\xC3\xA9",
                                                 "42", "foo_bar", "--", "\xE4\xBD\xA0\xE5\xA5\xBD", "I'm", "..."};
  for (int i = 0; i < 250; ++i) {
    std::string s;
    const int parts = 1 + static_cast<int>(rng() % 6);
    for (int p = 0; p < parts; ++p) {
      if (rng() % 2) s += pick(ws);
      if (rng() % 3) s += pick(words);
      if (rng() % 2) s += pick(ws);
    }
    out.push_back(s);
  }
  for (int n = 1; n <= 12; ++n) {
    out.push_back(std::string(n, ' '));
    out.push_back(std::string(n, ' ') + "x");
    out.push_back("x" + std::string(n, ' '));
    out.push_back(std::string(n, '\n') + "y");
  }

  // Contractions and case.
  for (const char* s : {"it's", "It'S", "they're", "THEY'RE", "we've", "We'Ve", "I'm", "I'M", "you'll", "YOU'LL",
                        "he'd", "HE'D", "can't", "'s", "'", "''", "'t'", "x'ſ", "o'clock", "rock'n'roll", "'ll'd",
                        "'re'", "don\xE2\x80\x99t"})
    out.push_back(s);

  // Unicode.
  static const std::vector<std::string> uni = {
      "\xE4\xB8\xAD\xE6\x96\x87\xE5\xAD\x97",                  // 中文字
      "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E\xE3\x81\xAE\xE6\x96\x87",  // 日本語の文
      "\xED\x95\x9C\xEA\xB5\xAD\xEC\x96\xB4",                  // 한국어
      "\xF0\x9F\x98\x80", "\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD",  // emoji, with skin tone
      "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7",  // ZWJ family
      "e\xCC\x81", "a\xCC\x8A\xCC\x81", "\xC3\xA9",            // combining marks, precomposed
      "\xD8\xA7\xD9\x84\xD8\xB9\xD8\xB1\xD8\xA8\xD9\x8A\xD8\xA9",  // العربية
      "\xE0\xA4\xB9\xE0\xA4\xBF\xE0\xA4\xA8\xE0\xA5\x8D\xE0\xA4\xA6\xE0\xA5\x80",  // हिन्दी
      "\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82",      // Привет
      "\xCE\x95\xCE\xBB\xCE\xBB\xCE\xB7\xCE\xBD\xCE\xB9\xCE\xBA\xCE\xAC",  // Ελληνικά
      "\xE2\x82\xAC", "\xC2\xA9", "\xE2\x84\xA2", "\xE2\x80\x94", "\xE2\x80\x9C", "\xE2\x80\xA6",
      "\xEF\xAC\x81", "\xE2\x84\xAB", "\xE2\x80\x8B", "\xEF\xBB\xBF", "\xF0\x90\x8D\x88", "\xC3\x9F",
      "\xE1\xBA\x9E", "\xE2\x91\xA0", "\xF0\x9D\x94\x84"};
  for (int i = 0; i < 250; ++i) {
    std::string s;
    const int parts = 1 + static_cast<int>(rng() % 5);
    for (int p = 0; p < parts; ++p) {
      s += pick(uni);
      if (rng() % 3 == 0) s += pick(ws);
      if (rng() % 3 == 0) s += pick(words);
    }
    out.push_back(s);
  }
  if (opt.include_u2581) out.push_back("\xE2\x96\x81hello \xE2\x96\x81\xE2\x96\x81 world");

  // Random printable ASCII.
  for (int i = 0; i < 120; ++i) {
    std::string s;
    const int len = 1 + static_cast<int>(rng() % 40);
    for (int c = 0; c < len; ++c) s += static_cast<char>(32 + rng() % 95);
    out.push_back(s);
  }

  // Control tokens written in text.
  if (!opt.control_tokens.empty()) {
    for (int i = 0; i < 200; ++i) {
      std::string s;
      const int parts = 1 + static_cast<int>(rng() % 4);
      for (int p = 0; p < parts; ++p) {
        if (rng() % 2) s += pick(words);
        if (rng() % 3 == 0) s += pick(ws);
        s += pick(opt.control_tokens);
        if (rng() % 2) s += pick(ws);
      }
      out.push_back(s);
    }
    for (const auto& t : opt.control_tokens) {
      out.push_back(t);
      out.push_back(t + t);
      out.push_back(" " + t + "\n");
      out.push_back(t.substr(0, t.size() - 1));  // almost a control token
    }
  }
  return out;
}

}  // namespace toga::test
