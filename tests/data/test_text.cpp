// Evaluation text assembly: the GPTQ WikiText-2 protocol (rows with their newline, white-space-only
// rows empty, joined with "\n\n") and JSON-lines documents.
#include <gtest/gtest.h>

#include <fstream>

#include "data/text.h"
#include "../test_util.h"
#include "util/error.h"

namespace toga {
namespace {

void write_file(const std::string& path, const std::string& content) {
  std::ofstream f(path, std::ios::binary);
  f << content;
}

TEST(Text, GptqWikiTextRows) {
  test::ScratchDir dir;
  write_file(dir / "w.raw", " \n = Title = \n\n \t \nText .\n");
  // rows: "", " = Title = \n", "", "", "Text .\n"
  EXPECT_EQ(gptq_wikitext_text(dir / "w.raw"), "\n\n = Title = \n\n\n\n\n\n\nText .\n");
  write_file(dir / "nolf.raw", "a\nb");
  EXPECT_EQ(gptq_wikitext_text(dir / "nolf.raw"), "a\n\n\nb");
  write_file(dir / "empty.raw", "");
  EXPECT_THROW(gptq_wikitext_text(dir / "empty.raw"), Error);
}

TEST(Text, GptqWikiTextRealFile) {
  const auto path = test::shared_path("data/text/wikitext-2-raw/wiki.test.raw");
  TOGA_REQUIRE_FILE(path);
  const std::string raw = read_text(path);
  const std::string t = gptq_wikitext_text(path);
  EXPECT_EQ(t.rfind("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is", 0), 0u);
  // 4358 rows: 4357 separators of two bytes; the 1467 white-space-only lines lose their content.
  size_t ws_bytes = 0;
  for (size_t b = 0; b < raw.size();) {
    const size_t e = raw.find('\n', b) + 1;
    if (raw.find_first_not_of(" \t\r\n", b) >= e) ws_bytes += e - b;
    b = e;
  }
  EXPECT_EQ(t.size(), raw.size() + 2 * 4357 - ws_bytes);
}

TEST(Text, JsonlDocuments) {
  test::ScratchDir dir;
  write_file(dir / "d.jsonl", "{\"text\": \"one\", \"x\": 1}\n\n{\"text\": \"two\\nlines\"}\n{\"text\": \"three\"}\n");
  EXPECT_EQ(jsonl_text(dir / "d.jsonl", "text", "\n\n"), "one\n\ntwo\nlines\n\nthree");
  EXPECT_EQ(jsonl_text(dir / "d.jsonl", "text", " ", 2), "one two\nlines");
  EXPECT_THROW(jsonl_text(dir / "d.jsonl", "body", " "), Error);
  write_file(dir / "bad.jsonl", "{\"text\": \"ok\"}\nnot json\n");
  try {
    jsonl_text(dir / "bad.jsonl", "text", " ");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("line 2"), std::string::npos) << e.what();
  }
  const auto c4 = test::shared_path("data/text/c4/c4-validation-docs.jsonl");
  if (std::ifstream(c4)) {
    EXPECT_EQ(jsonl_text(c4, "text", "\n\n", 3).rfind("Are you looking for", 0), 0u);
  }
}

TEST(Text, MissingFileIsNamed) {
  try {
    read_text("/nonexistent/wiki.test.raw");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/wiki.test.raw"), std::string::npos);
  }
}

}  // namespace
}  // namespace toga
