// Tokens matched as whole strings in the input before any model runs: control tokens
// ("<|im_start|>", "<s>"), matched only when special tokens are allowed, and user-defined tokens,
// always matched (Hugging Face added_tokens with special=false, GGUF token type 4).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace toga {

// GGUF token types (tokenizer.ggml.token_type), numbered as in the format.
enum class TokenType : int { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

struct AddedToken {
  int id = -1;
  std::string content;
  bool special = true;  // false: user-defined, matched even without allow_special
  // Hugging Face options: absorb white space on the left / right; match only as a whole word.
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
};

struct Segment {
  size_t begin = 0, end = 0;  // byte range of plain text in the input, when id < 0
  int id = -1;                // an added token
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  explicit AddedTokenMatcher(std::vector<AddedToken> tokens);

  // Splits text into plain-text segments and added tokens: leftmost match first, the longest
  // among matches at the same place. Empty text segments are dropped.
  std::vector<Segment> split(std::string_view text, bool allow_special) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  std::vector<AddedToken> tokens_;  // longest first
  bool first_byte_[256] = {};
};

}  // namespace toga
