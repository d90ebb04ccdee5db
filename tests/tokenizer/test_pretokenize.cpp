// Pre-tokenizer splits on hand-picked strings; the expected pieces are what Hugging Face
// `tokenizers` gives for the same regexes (ByteLevel, Digits+ByteLevel, Split with the Llama-3 and
// Qwen2 patterns). The bulk comparison against `tokenizers` is in test_bpe_hf.cpp.
#include <gtest/gtest.h>

#include "tokenizer/pretokenize.h"
#include "util/error.h"

namespace toga {
namespace {

std::vector<std::string> split(PreTokenizer kind, const std::string& s) {
  std::vector<Piece> pieces;
  pre_tokenize(kind, s, pieces);
  std::vector<std::string> out;
  size_t expect = 0;
  for (const auto& [b, e] : pieces) {
    EXPECT_EQ(b, expect) << "pieces must cover the input";
    EXPECT_LT(b, e);
    out.push_back(s.substr(b, e - b));
    expect = e;
  }
  EXPECT_EQ(expect, s.size());
  return out;
}

using V = std::vector<std::string>;

TEST(PreTokenize, Gpt2) {
  EXPECT_EQ(split(PreTokenizer::Gpt2, "Hello world! 123"), (V{"Hello", " world", "!", " 123"}));
  EXPECT_EQ(split(PreTokenizer::Gpt2, "a   b"), (V{"a", "  ", " b"}));
  EXPECT_EQ(split(PreTokenizer::Gpt2, "x  \n\n  y"), (V{"x", "  \n\n ", " y"}));
  EXPECT_EQ(split(PreTokenizer::Gpt2, "it's I'M"), (V{"it", "'s", " I", "'", "M"}));
  EXPECT_EQ(split(PreTokenizer::Gpt2, "foo\tbar"), (V{"foo", "\t", "bar"}));
  EXPECT_EQ(split(PreTokenizer::Gpt2, "  \n"), (V{"  \n"}));
  EXPECT_EQ(split(PreTokenizer::Gpt2, "(x)\n\ny"), (V{"(", "x", ")", "\n", "\n", "y"}));
  EXPECT_EQ(split(PreTokenizer::Gpt2, "hi!!\r\n\r\nyo"), (V{"hi", "!!", "\r\n\r", "\n", "yo"}));
  EXPECT_EQ(split(PreTokenizer::Gpt2, "\xC2\xBFQu\xC3\xA9?"), (V{"\xC2\xBF", "Qu\xC3\xA9", "?"}));
  // NBSP is white space; U+180E (no longer a space since Unicode 6.3) and U+200B are not.
  EXPECT_EQ(split(PreTokenizer::Gpt2, "a\xC2\xA0" "b"), (V{"a", "\xC2\xA0", "b"}));
  EXPECT_EQ(split(PreTokenizer::Gpt2, "a\xE1\xA0\x8E" "b"), (V{"a", "\xE1\xA0\x8E", "b"}));
}

TEST(PreTokenize, SmolLMSplitsEveryDigit) {
  EXPECT_EQ(split(PreTokenizer::SmolLM, "Hello world! 123"), (V{"Hello", " world", "!", " ", "1", "2", "3"}));
  EXPECT_EQ(split(PreTokenizer::SmolLM, "12345678"), (V{"1", "2", "3", "4", "5", "6", "7", "8"}));
  EXPECT_EQ(split(PreTokenizer::SmolLM, "a 1 b22"), (V{"a", " ", "1", " b", "2", "2"}));
  // \p{N} beyond ASCII, as HF's Digits (char::is_numeric) does: superscripts, Arabic-Indic, fractions.
  EXPECT_EQ(split(PreTokenizer::SmolLM, "ab12\xC2\xB3\xD9\xA3\xC2\xBDx 4"),
            (V{"ab", "1", "2", "\xC2\xB3", "\xD9\xA3", "\xC2\xBD", "x", " ", "4"}));
}

TEST(PreTokenize, Llama3) {
  EXPECT_EQ(split(PreTokenizer::Llama3, "Hello world! 123"), (V{"Hello", " world", "!", " ", "123"}));
  EXPECT_EQ(split(PreTokenizer::Llama3, "12345678"), (V{"123", "456", "78"}));
  EXPECT_EQ(split(PreTokenizer::Llama3, "x  \n\n  y"), (V{"x", "  \n\n", " ", " y"}));
  EXPECT_EQ(split(PreTokenizer::Llama3, "it's I'M"), (V{"it", "'s", " I", "'M"}));
  EXPECT_EQ(split(PreTokenizer::Llama3, "foo\tbar"), (V{"foo", "\tbar"}));
  EXPECT_EQ(split(PreTokenizer::Llama3, "(x)\n\ny"), (V{"(x", ")\n\n", "y"}));
  EXPECT_EQ(split(PreTokenizer::Llama3, "hi!!\r\n\r\nyo"), (V{"hi", "!!\r\n\r\n", "yo"}));
  EXPECT_EQ(split(PreTokenizer::Llama3, "a 1 b22"), (V{"a", " ", "1", " b", "22"}));
  EXPECT_EQ(split(PreTokenizer::Llama3, "\xC2\xBFQu\xC3\xA9?"), (V{"\xC2\xBFQu\xC3\xA9", "?"}));
  // (?i:...) folds U+017F LONG S to 's', as Oniguruma does.
  EXPECT_EQ(split(PreTokenizer::Llama3, "x'\xC5\xBF"), (V{"x", "'\xC5\xBF"}));
}

TEST(PreTokenize, Qwen2SingleDigits) {
  EXPECT_EQ(split(PreTokenizer::Qwen2, "12345678"), (V{"1", "2", "3", "4", "5", "6", "7", "8"}));
  EXPECT_EQ(split(PreTokenizer::Qwen2, "a 1 b22"), (V{"a", " ", "1", " b", "2", "2"}));
}

TEST(PreTokenize, MalformedUtf8IsKeptByteForByte) {
  const std::string s = "ab\xFF\xC3 c\x80";
  for (auto k : {PreTokenizer::Gpt2, PreTokenizer::SmolLM, PreTokenizer::Llama3, PreTokenizer::Qwen2}) {
    std::string joined;
    for (const auto& p : split(k, s)) joined += p;
    EXPECT_EQ(joined, s);
  }
}

TEST(PreTokenize, GgufNames) {
  EXPECT_EQ(pre_tokenizer_from_gguf_name("smollm", "f"), PreTokenizer::SmolLM);
  EXPECT_EQ(pre_tokenizer_from_gguf_name("llama-bpe", "f"), PreTokenizer::Llama3);
  EXPECT_EQ(pre_tokenizer_from_gguf_name("qwen2", "f"), PreTokenizer::Qwen2);
  EXPECT_EQ(pre_tokenizer_from_gguf_name("gpt-2", "f"), PreTokenizer::Gpt2);
  try {
    pre_tokenizer_from_gguf_name("deepseek-coder", "model.gguf");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("deepseek-coder"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("model.gguf"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace toga
