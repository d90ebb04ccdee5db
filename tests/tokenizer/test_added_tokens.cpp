// Whole-string matching of added tokens: leftmost-longest, control tokens only when allowed,
// user-defined tokens always, Hugging Face's lstrip / rstrip / single_word.
#include <gtest/gtest.h>

#include "../test_util.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/tokenizer.h"

namespace toga {
namespace {

std::string show(std::string_view text, const std::vector<Segment>& segs) {
  std::string o;
  for (const auto& s : segs) o += s.id >= 0 ? "[" + std::to_string(s.id) + "]" : "(" + std::string(text.substr(s.begin, s.end - s.begin)) + ")";
  return o;
}

TEST(AddedTokens, LeftmostLongestAndSpecialFlag) {
  AddedTokenMatcher m({{1, "<a>", true}, {2, "<a><b>", true}, {3, "<u>", false}});
  const std::string t = "x<a><b>y<a>z<u>";
  EXPECT_EQ(show(t, m.split(t, true)), "(x)[2](y)[1](z)[3]");
  EXPECT_EQ(show(t, m.split(t, false)), "(x<a><b>y<a>z)[3]");
  EXPECT_EQ(show("", m.split("", true)), "");
}

TEST(AddedTokens, StripAndSingleWord) {
  AddedToken l{1, "<m>", true};
  l.lstrip = true;
  AddedToken r{2, "<r>", true};
  r.rstrip = true;
  AddedToken w{3, "ab", true};
  w.single_word = true;
  AddedTokenMatcher m({l, r, w});
  std::string t = "x  <m> y<r>  z";
  EXPECT_EQ(show(t, m.split(t, true)), "(x)[1]( y)[2](z)");
  t = "ab cab ab_ ab";
  EXPECT_EQ(show(t, m.split(t, true)), "[3]( cab ab_ )[3]");
}

TEST(AddedTokens, UserDefinedTokensMatchWithoutAllowSpecial) {
  TOGA_REQUIRE_FILE(test::smollm2_path());
  const auto smol = load_tokenizer(test::smollm2_path());
  BPEConfig c = dynamic_cast<const BPETokenizer&>(*smol).config();
  for (auto& a : c.added)
    if (a.id == 8) a.special = false;  // <issue_start> as a user-defined token
  c.types[8] = TokenType::UserDefined;
  const BPETokenizer tok(std::move(c), "test");
  const auto ids = tok.encode("x<issue_start>y<|im_start|>", false);
  EXPECT_NE(std::find(ids.begin(), ids.end(), 8), ids.end());
  EXPECT_EQ(std::find(ids.begin(), ids.end(), 1), ids.end());
  EXPECT_FALSE(tok.is_control(8));
  EXPECT_EQ(tok.decode(ids), "x<issue_start>y<|im_start|>");
}

}  // namespace
}  // namespace toga
