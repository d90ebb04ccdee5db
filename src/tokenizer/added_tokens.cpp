#include "tokenizer/added_tokens.h"

#include <algorithm>
#include <cstring>

#include "tokenizer/unicode.h"

namespace toga {

AddedTokenMatcher::AddedTokenMatcher(std::vector<AddedToken> tokens) : tokens_(std::move(tokens)) {
  tokens_.erase(std::remove_if(tokens_.begin(), tokens_.end(), [](const AddedToken& t) { return t.content.empty(); }),
                tokens_.end());
  std::stable_sort(tokens_.begin(), tokens_.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
  for (const auto& t : tokens_) first_byte_[static_cast<unsigned char>(t.content[0])] = true;
}

static bool is_word_char_before(std::string_view text, size_t pos) {
  if (pos == 0) return false;
  size_t start = pos - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  size_t p = start;
  const auto d = unicode::next_code_point(text, p);
  if (d.invalid) return false;
  const auto cl = unicode::char_class(d.cp);
  return cl == unicode::CharClass::Letter || cl == unicode::CharClass::Number || d.cp == U'_';
}

static bool is_word_char_at(std::string_view text, size_t pos) {
  if (pos >= text.size()) return false;
  const auto d = unicode::next_code_point(text, pos);
  if (d.invalid) return false;
  const auto cl = unicode::char_class(d.cp);
  return cl == unicode::CharClass::Letter || cl == unicode::CharClass::Number || d.cp == U'_';
}

static bool is_space_byte_before(std::string_view text, size_t pos, size_t& start) {
  // White space left of a token with lstrip (ASCII white space; what HF strips in practice).
  start = pos;
  while (start > 0 && std::strchr(" \t\n\r\f\v", text[start - 1]) && text[start - 1] != '\0') --start;
  return start < pos;
}

std::vector<Segment> AddedTokenMatcher::split(std::string_view text, bool allow_special) const {
  std::vector<Segment> out;
  size_t text_start = 0;  // start of the pending plain-text segment
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    if (!first_byte_[static_cast<unsigned char>(text[i])]) {
      ++i;
      continue;
    }
    const AddedToken* hit = nullptr;
    for (const auto& t : tokens_) {
      if (t.special && !allow_special) continue;
      if (t.content.size() > n - i || std::memcmp(text.data() + i, t.content.data(), t.content.size()) != 0) continue;
      if (t.single_word && (is_word_char_before(text, i) || is_word_char_at(text, i + t.content.size()))) continue;
      hit = &t;
      break;
    }
    if (!hit) {
      ++i;
      continue;
    }
    size_t seg_end = i;
    if (hit->lstrip) {
      size_t s;
      if (is_space_byte_before(text, i, s) && s >= text_start) seg_end = s;
    }
    if (seg_end > text_start) out.push_back({text_start, seg_end, -1});
    out.push_back({i, i + hit->content.size(), hit->id});
    i += hit->content.size();
    if (hit->rstrip)
      while (i < n && std::strchr(" \t\n\r\f\v", text[i]) && text[i] != '\0') ++i;
    text_start = i;
  }
  if (n > text_start) out.push_back({text_start, n, -1});
  return out;
}

}  // namespace toga
