#include "tokenizer/pretokenize.h"

#include <algorithm>
#include <cstdint>

#include "tokenizer/unicode.h"
#include "util/error.h"

namespace toga {

using unicode::CharClass;

const char* pre_tokenizer_name(PreTokenizer p) {
  switch (p) {
    case PreTokenizer::Gpt2: return "gpt-2";
    case PreTokenizer::SmolLM: return "smollm";
    case PreTokenizer::Llama3: return "llama-bpe";
    case PreTokenizer::Qwen2: return "qwen2";
  }
  return "?";
}

PreTokenizer pre_tokenizer_from_gguf_name(const std::string& name, const std::string& where) {
  // Only names whose llama.cpp regexes are exactly one of the kinds implemented here.
  if (name == "gpt-2" || name == "phi-2" || name == "mpt" || name == "olmo") return PreTokenizer::Gpt2;
  if (name == "smollm" || name == "starcoder") return PreTokenizer::SmolLM;
  if (name == "llama3" || name == "llama-v3" || name == "llama-bpe") return PreTokenizer::Llama3;
  if (name == "qwen2" || name == "deepseek-r1-qwen") return PreTokenizer::Qwen2;
  fail_file(where,
            "unsupported tokenizer.ggml.pre '{}' (supported: gpt-2, phi-2, mpt, olmo, smollm, starcoder, llama3, "
            "llama-v3, llama-bpe, qwen2, deepseek-r1-qwen)",
            name);
}

const char* pre_tokenizer_regex(PreTokenizer p) {
  switch (p) {
    case PreTokenizer::Llama3:
      return R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    case PreTokenizer::Qwen2:
      return R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    default:
      return nullptr;
  }
}

namespace {

// The text as code points with their classes and byte offsets (offset[n] == text size).
struct CodePoints {
  std::vector<char32_t> cp;
  std::vector<CharClass> cls;
  std::vector<size_t> offset;

  explicit CodePoints(std::string_view text) {
    cp.reserve(text.size());
    cls.reserve(text.size());
    offset.reserve(text.size() + 1);
    size_t pos = 0;
    while (pos < text.size()) {
      offset.push_back(pos);
      const auto d = unicode::next_code_point(text, pos);
      // A malformed byte is kept as a stand-in that no class but "other" accepts.
      cp.push_back(d.invalid ? 0xFFFFFFFFu : d.cp);
      cls.push_back(d.invalid ? CharClass::Other : unicode::char_class(d.cp));
    }
    offset.push_back(text.size());
  }
  size_t size() const { return cp.size(); }
};

class Matcher {
 public:
  Matcher(const CodePoints& c, size_t end) : c_(c), end_(end) {}

  size_t run(size_t k, CharClass cl) const {
    while (k < end_ && c_.cls[k] == cl) ++k;
    return k;
  }

  // ' ?X+' for a class X: the optional space is taken only when X follows it.
  size_t space_then_run(size_t i, CharClass cl) const {
    if (c_.cp[i] == U' ' && i + 1 < end_ && c_.cls[i + 1] == cl) return run(i + 1, cl);
    if (c_.cls[i] == cl) return run(i, cl);
    return i;
  }

  // '\s+(?!\S)|\s+' at a white-space code point: a run followed by a non-space gives its last
  // space to the next piece (so " word" keeps its space), unless the run is one code point long.
  size_t whitespace(size_t i) const {
    const size_t j = run(i, CharClass::Space);
    if (j == end_ || j - i == 1) return j;
    return j - 1;
  }

  // GPT-2 contractions are case-sensitive; Llama-3's are (?i:...), which in Oniguruma also folds
  // U+017F LATIN SMALL LETTER LONG S to 's'.
  size_t contraction(size_t i, bool ignore_case) const {
    if (c_.cp[i] != U'\'' || i + 1 >= end_) return i;
    auto is = [&](size_t k, char lower) {
      const char32_t ch = c_.cp[k];
      if (ch == static_cast<char32_t>(lower)) return true;
      if (!ignore_case) return false;
      if (ch == static_cast<char32_t>(lower - 'a' + 'A')) return true;
      return lower == 's' && ch == 0x17F;
    };
    if (is(i + 1, 's') || is(i + 1, 't') || is(i + 1, 'm') || is(i + 1, 'd')) return i + 2;
    if (i + 2 < end_) {
      if ((is(i + 1, 'r') && is(i + 2, 'e')) || (is(i + 1, 'v') && is(i + 2, 'e')) ||
          (is(i + 1, 'l') && is(i + 2, 'l')))
        return i + 3;
    }
    return i;
  }

  size_t gpt2(size_t i) const {
    size_t j = contraction(i, false);
    if (j > i) return j;
    if ((j = space_then_run(i, CharClass::Letter)) > i) return j;
    if ((j = space_then_run(i, CharClass::Number)) > i) return j;
    if ((j = space_then_run(i, CharClass::Other)) > i) return j;
    return whitespace(i);
  }

  size_t llama3(size_t i, size_t max_digits) const {
    size_t j = contraction(i, true);
    if (j > i) return j;
    const CharClass ci = c_.cls[i];
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (ci != CharClass::Letter && ci != CharClass::Number && !unicode::is_newline(c_.cp[i]) && i + 1 < end_ &&
        c_.cls[i + 1] == CharClass::Letter)
      return run(i + 1, CharClass::Letter);
    if (ci == CharClass::Letter) return run(i, CharClass::Letter);
    // \p{N}{1,max}
    if (ci == CharClass::Number) return std::min(run(i, CharClass::Number), i + max_digits);
    // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    if ((j = space_then_run(i, CharClass::Other)) > i) {
      while (j < end_ && unicode::is_newline(c_.cp[j])) ++j;
      return j;
    }
    // \s*[\r\n]+ : the white-space run up to and including its last newline.
    const size_t ws_end = run(i, CharClass::Space);
    for (size_t k = ws_end; k > i; --k)
      if (unicode::is_newline(c_.cp[k - 1])) return k;
    return whitespace(i);
  }

 private:
  const CodePoints& c_;
  size_t end_;
};

}  // namespace

void pre_tokenize(PreTokenizer kind, std::string_view text, std::vector<Piece>& out) {
  out.clear();
  if (text.empty()) return;
  const CodePoints c(text);
  const size_t n = c.size();
  auto emit = [&](size_t a, size_t b) { out.emplace_back(c.offset[a], c.offset[b]); };

  switch (kind) {
    case PreTokenizer::Gpt2: {
      const Matcher m(c, n);
      for (size_t i = 0; i < n;) {
        const size_t j = m.gpt2(i);
        emit(i, j);
        i = j;
      }
      break;
    }
    case PreTokenizer::SmolLM: {
      // Digits are cut out first; the regex then sees each stretch between them as a whole
      // string, so its look-ahead ends at the next digit.
      for (size_t i = 0; i < n;) {
        if (c.cls[i] == CharClass::Number) {
          emit(i, i + 1);
          ++i;
          continue;
        }
        size_t seg_end = i;
        while (seg_end < n && c.cls[seg_end] != CharClass::Number) ++seg_end;
        const Matcher m(c, seg_end);
        while (i < seg_end) {
          const size_t j = m.gpt2(i);
          emit(i, j);
          i = j;
        }
      }
      break;
    }
    case PreTokenizer::Llama3:
    case PreTokenizer::Qwen2: {
      const size_t max_digits = kind == PreTokenizer::Llama3 ? 3 : 1;
      const Matcher m(c, n);
      for (size_t i = 0; i < n;) {
        const size_t j = m.llama3(i, max_digits);
        emit(i, j);
        i = j;
      }
      break;
    }
  }
}

}  // namespace toga
