// UTF-8 decoding and the few Unicode properties pre-tokenizers need (\p{L}, \p{N}, White_Space),
// answered by ICU so that they follow the Unicode tables rather than the C locale.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace toga::unicode {

// The classes the pre-tokenizer regexes distinguish. Every code point is exactly one of them.
enum class CharClass : uint8_t { Letter, Number, Space, Other };

// Decodes one code point at s[pos] and advances pos. A byte that does not start a well-formed
// sequence (overlong, surrogate, truncated, > U+10FFFF) is consumed alone and reported as
// `invalid` (cp = the byte), so callers can keep the raw bytes of malformed input.
struct Decoded {
  char32_t cp;
  bool invalid;
};
Decoded next_code_point(std::string_view s, size_t& pos);

void append_utf8(std::string& out, char32_t cp);

CharClass char_class(char32_t cp);
inline bool is_newline(char32_t cp) { return cp == U'\r' || cp == U'\n'; }

// Unicode NFC of UTF-8 text (Qwen2's normalizer); malformed bytes pass through unchanged.
std::string nfc(std::string_view s);

bool is_valid_utf8(std::string_view s);

}  // namespace toga::unicode
