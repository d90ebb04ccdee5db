#include "tokenizer/unicode.h"

#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <array>

#include "util/error.h"

namespace toga::unicode {

Decoded next_code_point(std::string_view s, size_t& pos) {
  const auto b0 = static_cast<unsigned char>(s[pos]);
  if (b0 < 0x80) {
    ++pos;
    return {b0, false};
  }
  int len = 0;
  char32_t cp = 0;
  char32_t min = 0;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2, cp = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3, cp = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4, cp = b0 & 0x07, min = 0x10000;
  } else {
    ++pos;
    return {b0, true};
  }
  if (pos + len > s.size()) {
    ++pos;
    return {b0, true};
  }
  for (int i = 1; i < len; ++i) {
    const auto b = static_cast<unsigned char>(s[pos + i]);
    if ((b & 0xC0) != 0x80) {
      ++pos;
      return {b0, true};
    }
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
    ++pos;
    return {b0, true};
  }
  pos += len;
  return {cp, false};
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

static CharClass classify_with_icu(char32_t cp) {
  if (u_isUWhiteSpace(static_cast<UChar32>(cp))) return CharClass::Space;
  switch (u_charType(static_cast<UChar32>(cp))) {
    case U_UPPERCASE_LETTER:
    case U_LOWERCASE_LETTER:
    case U_TITLECASE_LETTER:
    case U_MODIFIER_LETTER:
    case U_OTHER_LETTER:
      return CharClass::Letter;
    case U_DECIMAL_DIGIT_NUMBER:
    case U_LETTER_NUMBER:
    case U_OTHER_NUMBER:
      return CharClass::Number;
    default:
      return CharClass::Other;
  }
}

// Most text is ASCII/Latin-1; a table for it keeps ICU out of the hot loop.
static const std::array<CharClass, 256>& latin1_table() {
  static const std::array<CharClass, 256> table = [] {
    std::array<CharClass, 256> t{};
    for (char32_t c = 0; c < 256; ++c) t[c] = classify_with_icu(c);
    return t;
  }();
  return table;
}

CharClass char_class(char32_t cp) {
  if (cp < 256) return latin1_table()[cp];
  return classify_with_icu(cp);
}

static void append_nfc(std::string& result, std::string_view s) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* norm = icu::Normalizer2::getNFCInstance(status);
  if (U_FAILURE(status)) fail("ICU: cannot load the NFC normalizer: {}", u_errorName(status));
  const icu::UnicodeString in = icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), static_cast<int32_t>(s.size())));
  const bool already = norm->isNormalized(in, status);
  if (U_SUCCESS(status) && already) {
    result.append(s);
    return;
  }
  status = U_ZERO_ERROR;
  const icu::UnicodeString out = norm->normalize(in, status);
  if (U_FAILURE(status)) fail("ICU: NFC normalization failed: {}", u_errorName(status));
  out.toUTF8String(result);
}

std::string nfc(std::string_view s) {
  // ICU would turn malformed bytes into U+FFFD; normalize the well-formed runs and keep the rest
  // byte for byte, so byte-level tokenizers still see (and can round-trip) the original bytes.
  std::string result;
  result.reserve(s.size());
  size_t run = 0, pos = 0;
  while (pos < s.size()) {
    const size_t at = pos;
    if (next_code_point(s, pos).invalid) {
      if (at > run) append_nfc(result, s.substr(run, at - run));
      result += s[at];
      run = pos;
    }
  }
  if (s.size() > run) append_nfc(result, s.substr(run));
  return result;
}

bool is_valid_utf8(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size())
    if (next_code_point(s, pos).invalid) return false;
  return true;
}

}  // namespace toga::unicode
