#include "tokenizer/spm.h"

#include <cstring>
#include <fstream>
#include <queue>

#include "io/gguf.h"
#include "tokenizer/unicode.h"
#include "util/error.h"

namespace toga {

static uint64_t pair_key(int a, int b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

static const std::string kSpaceSymbol = "\xE2\x96\x81";  // U+2581, SentencePiece's escaped space

static std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  size_t pos = 0;
  while ((pos = s.find(from, pos)) != std::string::npos) {
    s.replace(pos, from.size(), to);
    pos += to.size();
  }
  return s;
}

// "<0xAB>" -> 0xAB, else -1.
static int parse_byte_piece(const std::string& p) {
  if (p.size() != 6 || p[0] != '<' || p[1] != '0' || p[2] != 'x' || p[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; ++i) {
    const char c = p[i];
    v <<= 4;
    if (c >= '0' && c <= '9')
      v |= c - '0';
    else if (c >= 'A' && c <= 'F')
      v |= c - 'A' + 10;
    else if (c >= 'a' && c <= 'f')
      v |= c - 'a' + 10;
    else
      return -1;
  }
  return v;
}

SPMTokenizer::SPMTokenizer(SPMConfig config, const std::string& where) : config_(std::move(config)) {
  source = where;
  const size_t n = config_.pieces.size();
  if (n == 0) fail_file(where, "empty vocabulary");
  if (config_.scores.size() != n) fail_file(where, "{} scores for {} pieces", config_.scores.size(), n);
  if (config_.types.empty()) config_.types.assign(n, TokenType::Normal);
  if (config_.types.size() != n) fail_file(where, "{} token types for {} pieces", config_.types.size(), n);

  text_.reserve(n);
  for (const auto& p : config_.pieces) text_.push_back(replace_all(p, kSpaceSymbol, " "));
  std::fill(std::begin(byte_id_), std::end(byte_id_), -1);
  std::vector<AddedToken> added;
  for (size_t id = 0; id < n; ++id) {
    const int i = static_cast<int>(id);
    piece_to_id_.emplace(config_.pieces[id], i);
    switch (config_.types[id]) {
      case TokenType::Normal:
      case TokenType::UserDefined:
      case TokenType::Unused:
        // SentencePiece merges into normal, user-defined and unused pieces (unused ones are split
        // back afterwards); control, unknown and byte pieces are never merge results.
        if (!text_[id].empty()) mergeable_.emplace(text_[id], i);
        if (config_.types[id] == TokenType::UserDefined) added.push_back({i, text_[id], false});
        break;
      case TokenType::Byte: {
        const int b = parse_byte_piece(config_.pieces[id]);
        if (b < 0) fail_file(where, "byte token {} is '{}', not <0xXX>", id, config_.pieces[id]);
        if (byte_id_[b] < 0) byte_id_[b] = i;
        break;
      }
      case TokenType::Control:
        added.push_back({i, config_.pieces[id], true});
        break;
      case TokenType::Unknown:
        break;
    }
  }
  added_ = AddedTokenMatcher(std::move(added));

  // Every way of writing each piece as two pieces: symbols always hold pieces, so merges are looked
  // up by id pair instead of by hashing the joined text.
  for (const auto& [piece, id] : mergeable_) {
    for (size_t cut = 0;;) {
      unicode::next_code_point(piece, cut);
      if (cut >= piece.size()) break;
      const auto a = mergeable_.find(piece.substr(0, cut));
      const auto b = mergeable_.find(piece.substr(cut));
      if (a != mergeable_.end() && b != mergeable_.end()) pair_to_piece_.emplace(pair_key(a->second, b->second), id);
    }
  }

  std::fill(std::begin(barrier_), std::end(barrier_), false);
  for (int b = 0; b < 0x80; ++b) barrier_[b] = true;
  for (const auto& [piece, id] : mergeable_)
    if (piece.size() > 1)
      for (unsigned char c : piece) barrier_[c] = false;
}

std::string SPMTokenizer::id_to_piece(int id) const {
  if (id < 0 || id >= vocab_size()) fail("token id {} outside the vocabulary of {}", id, vocab_size());
  return config_.pieces[id];
}

int SPMTokenizer::piece_to_id(const std::string& piece) const {
  const auto it = piece_to_id_.find(piece);
  return it == piece_to_id_.end() ? -1 : it->second;
}

bool SPMTokenizer::is_control(int id) const {
  return id >= 0 && id < vocab_size() && config_.types[id] == TokenType::Control;
}

void SPMTokenizer::emit_symbol(std::string_view piece, const std::unordered_map<std::string_view, size_t>& splits,
                               std::vector<int>& out) const {
  const auto it = mergeable_.find(piece);
  if (it != mergeable_.end()) {
    if (config_.types[it->second] == TokenType::Unused) {
      const auto s = splits.find(piece);
      if (s != splits.end()) {
        emit_symbol(piece.substr(0, s->second), splits, out);
        emit_symbol(piece.substr(s->second), splits, out);
        return;
      }
    }
    out.push_back(it->second);
    return;
  }
  for (unsigned char b : piece) {
    if (byte_id_[b] >= 0)
      out.push_back(byte_id_[b]);
    else if (unk_id >= 0)
      out.push_back(unk_id);
    else
      fail_file(source, "byte 0x{:02X} has no token and the vocabulary has no <unk>", static_cast<int>(b));
  }
}

void SPMTokenizer::encode_segment(std::string_view segment, bool dummy_prefix, std::vector<int>& out) const {
  // Spaces are the vocabulary's word marker; a literal U+2581 in the input means the same, as in
  // SentencePiece (which escapes spaces to it).
  std::string s;
  s.reserve(segment.size() + 1);
  if (dummy_prefix) s += ' ';
  s.append(segment);
  if (s.find(kSpaceSymbol) != std::string::npos) s = replace_all(std::move(s), kSpaceSymbol, " ");

  // A byte that occurs in no multi-character piece never merges, so the text on either side of it
  // is encoded independently: short heaps instead of one over the whole text (Llama-2's "\n").
  size_t begin = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (!barrier_[static_cast<unsigned char>(s[i])]) continue;
    merge_range(s, begin, i, out);
    emit_symbol(std::string_view(s).substr(i, 1), {}, out);
    begin = i + 1;
  }
  merge_range(s, begin, s.size(), out);
}

void SPMTokenizer::merge_range(const std::string& s, size_t begin, size_t end, std::vector<int>& out) const {
  struct Sym {
    size_t start, len;
    int prev, next;
    int id;  // the piece it spells, -1 for a character outside the vocabulary
  };
  std::vector<Sym> syms;
  syms.reserve(end - begin);
  const std::string_view text = std::string_view(s).substr(0, end);
  for (size_t pos = begin; pos < end;) {
    const size_t at = pos;
    unicode::next_code_point(text, pos);
    const int i = static_cast<int>(syms.size());
    const auto it = mergeable_.find(text.substr(at, pos - at));
    syms.push_back({at, pos - at, i - 1, -1, it == mergeable_.end() ? -1 : it->second});
    if (i > 0) syms[i - 1].next = i;
  }
  if (syms.empty()) return;

  struct Cand {
    float score;
    int left, right;
    size_t len;
    int id;
    bool operator<(const Cand& o) const {  // best score first, then leftmost
      return score != o.score ? score < o.score : left > o.left;
    }
  };
  std::priority_queue<Cand> queue;
  auto consider = [&](int left) {
    if (left < 0) return;
    const int right = syms[left].next;
    if (right < 0 || syms[left].id < 0 || syms[right].id < 0) return;
    const auto it = pair_to_piece_.find(pair_key(syms[left].id, syms[right].id));
    if (it != pair_to_piece_.end())
      queue.push({config_.scores[it->second], left, right, syms[left].len + syms[right].len, it->second});
  };
  for (int i = 0; i + 1 < static_cast<int>(syms.size()); ++i) consider(i);

  // Where each merged unused piece was joined, so it can be split back (SentencePiece's resegment).
  std::unordered_map<std::string_view, size_t> splits;
  while (!queue.empty()) {
    const Cand c = queue.top();
    queue.pop();
    Sym& l = syms[c.left];
    if (l.len == 0 || l.next != c.right || syms[c.right].len == 0 || l.len + syms[c.right].len != c.len) continue;
    Sym& r = syms[c.right];
    if (config_.types[c.id] == TokenType::Unused) splits[text.substr(l.start, c.len)] = l.len;
    l.len = c.len;
    l.id = c.id;
    r.len = 0;
    l.next = r.next;
    if (l.next >= 0) syms[l.next].prev = c.left;
    consider(l.prev);
    consider(c.left);
  }
  for (int i = 0; i >= 0; i = syms[i].next) emit_symbol(text.substr(syms[i].start, syms[i].len), splits, out);
}

std::vector<int> SPMTokenizer::encode(const std::string& text, bool allow_special) const {
  std::vector<int> out;
  out.reserve(text.size() / 3 + 4);
  // The dummy prefix goes before text that starts the input or follows a control token (as
  // llama.cpp does, and as encoding each stretch separately with SentencePiece gives).
  bool after_control = true;
  for (const auto& seg : added_.split(text, allow_special)) {
    if (seg.id >= 0) {
      out.push_back(seg.id);
      after_control = config_.types[seg.id] == TokenType::Control;
      continue;
    }
    encode_segment(std::string_view(text).substr(seg.begin, seg.end - seg.begin),
                   config_.add_dummy_prefix && after_control, out);
    after_control = false;
  }
  return out;
}

std::string SPMTokenizer::decode(const std::vector<int>& ids) const {
  std::string out;
  bool at_start = true;
  for (int id : ids) {
    if (id < 0 || id >= vocab_size()) fail("cannot decode token id {}: outside the vocabulary of {}", id, vocab_size());
    switch (config_.types[id]) {
      case TokenType::Control:
        continue;
      case TokenType::Unknown:
        out += " \xE2\x81\x87 ";  // SentencePiece's surface for <unk>: " ⁇ "
        break;
      case TokenType::Byte:
        out += static_cast<char>(parse_byte_piece(config_.pieces[id]));
        break;
      default: {
        const std::string& t = text_[id];
        out.append(at_start && config_.add_dummy_prefix && !t.empty() && t[0] == ' ' ? t.substr(1) : t);
      }
    }
    at_start = false;
  }
  return out;
}

// ---- loaders ----

std::unique_ptr<SPMTokenizer> SPMTokenizer::from_llama2c(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_file(path, "cannot open for reading");
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (data.size() < 4) fail_file(path, "too short for a llama2.c tokenizer ({} bytes)", data.size());
  int32_t max_len;
  std::memcpy(&max_len, data.data(), 4);
  if (max_len <= 0 || max_len > (1 << 20))
    fail_file(path, "max_token_length {} is not plausible: not a llama2.c tokenizer.bin", max_len);
  SPMConfig c;
  size_t pos = 4;
  while (pos < data.size()) {
    if (data.size() - pos < 8) fail_file(path, "truncated entry for token {} at byte {}", c.pieces.size(), pos);
    float score;
    int32_t len;
    std::memcpy(&score, data.data() + pos, 4);
    std::memcpy(&len, data.data() + pos + 4, 4);
    pos += 8;
    if (len < 0 || len > max_len || static_cast<size_t>(len) > data.size() - pos)
      fail_file(path, "token {} has length {} (max_token_length {}, {} bytes left)", c.pieces.size(), len, max_len,
                data.size() - pos);
    c.pieces.emplace_back(data.data() + pos, static_cast<size_t>(len));
    c.scores.push_back(score);
    pos += static_cast<size_t>(len);
  }
  if (c.pieces.size() < 3) fail_file(path, "only {} tokens", c.pieces.size());
  // llama2.c's exporter writes BOS and EOS as "\n<s>\n" and "\n</s>\n" (so that run.c prints
  // them on lines of their own); they are SentencePiece's <s> and </s>, and are named so here.
  c.types.assign(c.pieces.size(), TokenType::Normal);
  c.types[0] = TokenType::Unknown;
  c.types[1] = c.types[2] = TokenType::Control;
  if (c.pieces[1] == "\n<s>\n") c.pieces[1] = "<s>";
  if (c.pieces[2] == "\n</s>\n") c.pieces[2] = "</s>";
  for (size_t id = 3; id < c.pieces.size(); ++id)
    if (parse_byte_piece(c.pieces[id]) >= 0) c.types[id] = TokenType::Byte;
  auto tok = std::make_unique<SPMTokenizer>(std::move(c), path);
  tok->unk_id = 0;
  tok->bos_id = 1;
  tok->eos_id = 2;
  tok->add_bos = true;
  return tok;
}

std::unique_ptr<SPMTokenizer> SPMTokenizer::from_gguf(const GGUFFile& f) {
  const std::string& where = f.path();
  const std::string model = f.get_string("tokenizer.ggml.model");
  if (model != "llama") fail_file(where, "tokenizer.ggml.model is '{}', not the SentencePiece-style 'llama'", model);
  SPMConfig c;
  c.pieces = f.get_string_array("tokenizer.ggml.tokens");
  const size_t n = c.pieces.size();
  if (!f.has("tokenizer.ggml.scores")) fail_file(where, "a 'llama' vocabulary without tokenizer.ggml.scores");
  const auto scores = f.get_float_array("tokenizer.ggml.scores");
  if (scores.size() != n) fail_file(where, "tokenizer.ggml.scores has {} entries for {} tokens", scores.size(), n);
  c.scores.assign(scores.begin(), scores.end());
  if (f.has("tokenizer.ggml.token_type")) {
    const auto types = f.get_int_array("tokenizer.ggml.token_type");
    if (types.size() != n) fail_file(where, "tokenizer.ggml.token_type has {} entries for {} tokens", types.size(), n);
    for (auto t : types) c.types.push_back(static_cast<TokenType>(t >= 1 && t <= 6 ? t : 1));
  }
  if (f.has("tokenizer.ggml.add_space_prefix")) c.add_dummy_prefix = f.get_bool("tokenizer.ggml.add_space_prefix");
  if (f.has("tokenizer.ggml.remove_extra_whitespaces") && f.get_bool("tokenizer.ggml.remove_extra_whitespaces"))
    fail_file(where, "tokenizer.ggml.remove_extra_whitespaces = true is not supported");
  auto tok = std::make_unique<SPMTokenizer>(std::move(c), where);
  auto id_key = [&](const char* key, int def) -> int {
    if (!f.has(key)) return def;
    const int64_t v = f.get_int(key);
    if (v < 0 || v >= static_cast<int64_t>(n)) fail_file(where, "{} = {} is outside the vocabulary of {}", key, v, n);
    return static_cast<int>(v);
  };
  // llama.cpp's defaults for this vocabulary type.
  tok->unk_id = id_key("tokenizer.ggml.unknown_token_id", n > 0 ? 0 : -1);
  tok->bos_id = id_key("tokenizer.ggml.bos_token_id", n > 1 ? 1 : -1);
  tok->eos_id = id_key("tokenizer.ggml.eos_token_id", n > 2 ? 2 : -1);
  tok->pad_id = id_key("tokenizer.ggml.padding_token_id", -1);
  tok->add_bos = f.has("tokenizer.ggml.add_bos_token") ? f.get_bool("tokenizer.ggml.add_bos_token") : true;
  tok->add_eos = f.has("tokenizer.ggml.add_eos_token") ? f.get_bool("tokenizer.ggml.add_eos_token") : false;
  if (f.has("tokenizer.chat_template")) tok->chat_template = f.get_string("tokenizer.chat_template");
  return tok;
}

}  // namespace toga
