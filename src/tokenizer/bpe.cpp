#include "tokenizer/bpe.h"

#include <array>
#include <queue>

#include "io/gguf.h"
#include "tokenizer/unicode.h"
#include "util/error.h"

namespace toga {

namespace {

struct ByteMap {
  std::array<char32_t, 256> to_cp{};
  std::unordered_map<char32_t, int> to_byte;
  std::array<std::string, 256> utf8;

  ByteMap() {
    auto printable = [](int b) { return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255); };
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      to_cp[b] = printable(b) ? static_cast<char32_t>(b) : next++;
      to_byte[to_cp[b]] = b;
      unicode::append_utf8(utf8[b], to_cp[b]);
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

}  // namespace

char32_t byte_to_unicode(uint8_t b) { return byte_map().to_cp[b]; }

int unicode_to_byte(char32_t cp) {
  const auto& m = byte_map().to_byte;
  const auto it = m.find(cp);
  return it == m.end() ? -1 : it->second;
}

std::string bytes_to_byte_level(const std::string& bytes) {
  const auto& m = byte_map();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) out += m.utf8[b];
  return out;
}

static uint64_t pair_key(int a, int b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }

BPETokenizer::BPETokenizer(BPEConfig config, const std::string& where) : config_(std::move(config)) {
  source = where;
  const int n = static_cast<int>(config_.tokens.size());
  if (n == 0) fail_file(where, "empty BPE vocabulary");
  if (!config_.types.empty() && static_cast<int>(config_.types.size()) != n)
    fail_file(where, "{} token types for {} tokens", config_.types.size(), n);
  if (config_.types.empty()) config_.types.assign(n, TokenType::Normal);

  token_to_id_.reserve(n * 2);
  for (int id = 0; id < n; ++id) {
    // Duplicate entries exist in some vocabularies; the first id wins, as in llama.cpp.
    token_to_id_.emplace(config_.tokens[id], id);
  }

  merges_.reserve(config_.merges.size() * 2);
  for (size_t rank = 0; rank < config_.merges.size(); ++rank) {
    const auto& [a, b] = config_.merges[rank];
    const auto ia = token_to_id_.find(a), ib = token_to_id_.find(b), im = token_to_id_.find(a + b);
    if (ia == token_to_id_.end() || ib == token_to_id_.end())
      fail_file(where, "merge {} ('{} {}') uses a token that is not in the vocabulary", rank, a, b);
    if (im == token_to_id_.end())
      fail_file(where, "merge {} ('{} {}') makes '{}', which is not in the vocabulary", rank, a, b, a + b);
    // A repeated merge keeps its first (best) rank.
    merges_.emplace(pair_key(ia->second, ib->second), std::make_pair(static_cast<int>(rank), im->second));
  }

  for (int b = 0; b < 256; ++b) {
    const auto it = token_to_id_.find(byte_map().utf8[b]);
    byte_id_[b] = it == token_to_id_.end() ? -1 : it->second;
  }

  raw_text_.assign(n, false);
  for (auto& t : config_.added) {
    if (t.id < 0 || t.id >= n) fail_file(where, "added token '{}' has id {} outside the vocabulary of {}", t.content, t.id, n);
    raw_text_[t.id] = true;
    const TokenType ty = config_.types[t.id];
    if (ty == TokenType::Normal) config_.types[t.id] = t.special ? TokenType::Control : TokenType::UserDefined;
  }
  for (int id = 0; id < n; ++id) {
    const TokenType ty = config_.types[id];
    if (ty == TokenType::Control || ty == TokenType::UserDefined || ty == TokenType::Unknown) raw_text_[id] = true;
  }
  added_ = AddedTokenMatcher(config_.added);
}

TokenType BPETokenizer::type(int id) const {
  if (id < 0 || id >= vocab_size()) fail("token id {} outside the vocabulary of {}", id, vocab_size());
  return config_.types[id];
}

std::string BPETokenizer::id_to_piece(int id) const {
  if (id < 0 || id >= vocab_size()) fail("token id {} outside the vocabulary of {}", id, vocab_size());
  return config_.tokens[id];
}

int BPETokenizer::piece_to_id(const std::string& piece) const {
  const auto it = token_to_id_.find(piece);
  return it == token_to_id_.end() ? -1 : it->second;
}

bool BPETokenizer::is_control(int id) const {
  return id >= 0 && id < vocab_size() && config_.types[id] == TokenType::Control;
}

void BPETokenizer::bpe(const std::string& bytes, std::vector<int>& out) const {
  struct Sym {
    int id, prev, next;
  };
  struct Cand {
    int rank, pos, left, right, merged;
    bool operator<(const Cand& o) const {  // priority_queue pops the largest: invert for lowest rank, then leftmost
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };

  std::vector<Sym> syms;
  syms.reserve(bytes.size());
  for (unsigned char b : bytes) {
    // A byte whose stand-in is missing from the vocabulary is dropped, as Hugging Face does
    // without an unk token; byte-level vocabularies normally hold all 256.
    if (byte_id_[b] < 0) continue;
    const int i = static_cast<int>(syms.size());
    syms.push_back({byte_id_[b], i - 1, -1});
    if (i > 0) syms[i - 1].next = i;
  }
  if (syms.empty()) return;

  std::priority_queue<Cand> queue;
  auto consider = [&](int left) {
    const int right = syms[left].next;
    if (right < 0) return;
    const auto it = merges_.find(pair_key(syms[left].id, syms[right].id));
    if (it != merges_.end()) queue.push({it->second.first, left, syms[left].id, syms[right].id, it->second.second});
  };
  for (int i = 0; i + 1 < static_cast<int>(syms.size()); ++i) consider(i);

  while (!queue.empty()) {
    const Cand c = queue.top();
    queue.pop();
    Sym& left = syms[c.pos];
    // Entries go stale when either side has merged since; ids only ever grow into longer
    // tokens, so matching ids mean the pair is still there.
    if (left.id != c.left || left.next < 0 || syms[left.next].id != c.right) continue;
    Sym& right = syms[left.next];
    left.id = c.merged;
    right.id = -1;
    left.next = right.next;
    if (left.next >= 0) syms[left.next].prev = c.pos;
    if (left.prev >= 0) consider(left.prev);
    consider(c.pos);
  }
  for (int i = 0; i >= 0; i = syms[i].next) out.push_back(syms[i].id);
}

void BPETokenizer::encode_piece(const std::string& bytes, std::vector<int>& out) const {
  if (config_.ignore_merges) {
    const auto it = token_to_id_.find(bytes_to_byte_level(bytes));
    if (it != token_to_id_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  // Pieces are words; long ones (runs of spaces, base64) are rare and not worth caching.
  const bool cacheable = bytes.size() <= 64;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    const auto it = cache_.find(bytes);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t start = out.size();
  bpe(bytes, out);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() >= kCacheLimit) cache_.clear();
    cache_.emplace(bytes, std::vector<int>(out.begin() + static_cast<long>(start), out.end()));
  }
}

void BPETokenizer::encode_text(std::string_view text, std::vector<int>& out) const {
  std::string normalized;
  if (config_.nfc) {
    normalized = unicode::nfc(text);
    text = normalized;
  }
  std::vector<Piece> pieces;
  pre_tokenize(config_.pre, text, pieces);
  std::string word;
  for (const auto& [b, e] : pieces) {
    word.assign(text.data() + b, e - b);
    encode_piece(word, out);
  }
}

std::vector<int> BPETokenizer::encode(const std::string& text, bool allow_special) const {
  std::vector<int> out;
  out.reserve(text.size() / 3 + 4);
  for (const auto& seg : added_.split(text, allow_special)) {
    if (seg.id >= 0)
      out.push_back(seg.id);
    else
      encode_text(std::string_view(text).substr(seg.begin, seg.end - seg.begin), out);
  }
  return out;
}

std::string BPETokenizer::decode(const std::vector<int>& ids) const {
  std::string out;
  for (int id : ids) {
    if (id < 0 || id >= vocab_size()) fail("cannot decode token id {}: outside the vocabulary of {}", id, vocab_size());
    const std::string& t = config_.tokens[id];
    if (raw_text_[id]) {
      out += t;
      continue;
    }
    size_t pos = 0;
    while (pos < t.size()) {
      const size_t at = pos;
      const auto d = unicode::next_code_point(t, pos);
      const int b = d.invalid ? -1 : unicode_to_byte(d.cp);
      if (b >= 0)
        out += static_cast<char>(b);
      else
        out.append(t, at, pos - at);  // not a byte stand-in: keep the text as written
    }
  }
  return out;
}

// ---- GGUF ----

std::unique_ptr<BPETokenizer> BPETokenizer::from_gguf(const GGUFFile& f) {
  const std::string& where = f.path();
  const std::string model = f.get_string("tokenizer.ggml.model");
  if (model != "gpt2") fail_file(where, "tokenizer.ggml.model is '{}', not the byte-level BPE 'gpt2'", model);
  if (!f.has("tokenizer.ggml.pre"))
    fail_file(where, "no tokenizer.ggml.pre: the byte-level BPE pre-tokenizer is unknown (supported: gpt-2, smollm, "
                     "llama-bpe, qwen2 and their aliases)");
  BPEConfig c;
  c.pre = pre_tokenizer_from_gguf_name(f.get_string("tokenizer.ggml.pre"), where);
  c.nfc = c.pre == PreTokenizer::Qwen2;
  c.ignore_merges = c.pre == PreTokenizer::Llama3;
  c.tokens = f.get_string_array("tokenizer.ggml.tokens");
  const size_t n = c.tokens.size();
  if (f.has("tokenizer.ggml.token_type")) {
    const auto types = f.get_int_array("tokenizer.ggml.token_type");
    if (types.size() != n) fail_file(where, "tokenizer.ggml.token_type has {} entries for {} tokens", types.size(), n);
    c.types.reserve(n);
    for (auto t : types) {
      if (t < 1 || t > 6) t = 1;  // "undefined" (0) and unknown codes read as normal, as llama.cpp does
      c.types.push_back(static_cast<TokenType>(t));
    }
  }
  const auto merges = f.get_string_array("tokenizer.ggml.merges");
  c.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const auto& m = merges[i];
    const size_t sp = m.size() > 1 ? m.find(' ', 1) : std::string::npos;
    if (sp == std::string::npos) fail_file(where, "tokenizer.ggml.merges[{}] = '{}' is not 'left right'", i, m);
    c.merges.emplace_back(m.substr(0, sp), m.substr(sp + 1));
  }
  for (size_t id = 0; id < c.types.size(); ++id) {
    const TokenType t = c.types[id];
    if (t == TokenType::Control || t == TokenType::UserDefined || t == TokenType::Unknown)
      c.added.push_back({static_cast<int>(id), c.tokens[id], t != TokenType::UserDefined});
  }
  auto tok = std::make_unique<BPETokenizer>(std::move(c), where);

  auto id_key = [&](const char* key) -> int {
    if (!f.has(key)) return -1;
    const int64_t v = f.get_int(key);
    if (v < 0 || v >= static_cast<int64_t>(n)) fail_file(where, "{} = {} is outside the vocabulary of {}", key, v, n);
    return static_cast<int>(v);
  };
  tok->bos_id = id_key("tokenizer.ggml.bos_token_id");
  tok->eos_id = id_key("tokenizer.ggml.eos_token_id");
  tok->pad_id = id_key("tokenizer.ggml.padding_token_id");
  tok->unk_id = id_key("tokenizer.ggml.unknown_token_id");
  // llama.cpp's defaults when the keys are absent: Llama-3 vocabularies add BOS, others nothing.
  tok->add_bos = f.has("tokenizer.ggml.add_bos_token") ? f.get_bool("tokenizer.ggml.add_bos_token")
                                                        : tok->config().pre == PreTokenizer::Llama3;
  tok->add_eos = f.has("tokenizer.ggml.add_eos_token") ? f.get_bool("tokenizer.ggml.add_eos_token") : false;
  if (f.has("tokenizer.chat_template")) tok->chat_template = f.get_string("tokenizer.chat_template");
  return tok;
}

}  // namespace toga
