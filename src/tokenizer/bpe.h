// Byte-level BPE (GPT-2 family): one engine behind Hugging Face tokenizer.json files and GGUF
// vocabularies with tokenizer.ggml.model = gpt2.
//
// Text is split by a pre-tokenizer, each piece's bytes are mapped to GPT-2's printable stand-ins
// ("Ġ" for space, ...), and the ranked merges are applied lowest rank first (leftmost first among
// equal ranks) until none applies.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tokenizer/added_tokens.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer.h"

namespace toga {

class GGUFFile;

// GPT-2's reversible byte <-> code point map: printable bytes stand for themselves, the others
// (controls, space, 0x7F-0xA0, 0xAD) are moved to U+0100 upwards in byte order.
char32_t byte_to_unicode(uint8_t b);
int unicode_to_byte(char32_t cp);  // -1 for a code point outside the map
std::string bytes_to_byte_level(const std::string& bytes);

struct BPEConfig {
  std::vector<std::string> tokens;  // by id: byte-level form ("Ġthe"); added tokens as their own text
  std::vector<TokenType> types;     // by id; empty means all Normal
  std::vector<std::pair<std::string, std::string>> merges;  // by rank: merges[0] applies first
  PreTokenizer pre = PreTokenizer::Gpt2;
  bool nfc = false;            // NFC-normalize text before pre-tokenizing (Qwen2)
  bool ignore_merges = false;  // a piece that is itself in the vocabulary is emitted whole (Llama-3)
  // Matched as whole strings before pre-tokenizing. Their ids must exist; their types say
  // Control (special) or UserDefined.
  std::vector<AddedToken> added;
};

class BPETokenizer final : public Tokenizer {
 public:
  // Validates the configuration: every merge result must be a token (as in Hugging Face).
  BPETokenizer(BPEConfig config, const std::string& where);

  // From GGUF metadata (tokenizer.ggml.model must be "gpt2").
  static std::unique_ptr<BPETokenizer> from_gguf(const GGUFFile& file);
  // From a Hugging Face tokenizer.json; tokenizer_config.json (and config.json) beside it supply
  // BOS/EOS, add_bos_token and the chat template.
  static std::unique_ptr<BPETokenizer> from_hf_json(const std::string& path);

  std::vector<int> encode(const std::string& text, bool allow_special = false) const override;
  std::string decode(const std::vector<int>& ids) const override;
  int vocab_size() const override { return static_cast<int>(config_.tokens.size()); }
  std::string id_to_piece(int id) const override;
  int piece_to_id(const std::string& piece) const override;
  bool is_control(int id) const override;
  const char* kind() const override { return "bpe"; }

  const BPEConfig& config() const { return config_; }
  TokenType type(int id) const;

  // BPE of one pre-tokenized piece (raw bytes), appended to out. Exposed for tests.
  void encode_piece(const std::string& bytes, std::vector<int>& out) const;

 private:
  void bpe(const std::string& bytes, std::vector<int>& out) const;
  void encode_text(std::string_view text, std::vector<int>& out) const;

  BPEConfig config_;
  std::unordered_map<std::string, int> token_to_id_;
  std::unordered_map<uint64_t, std::pair<int, int>> merges_;  // (left id, right id) -> (rank, merged id)
  int byte_id_[256];                                          // id of each byte's stand-in, -1 if absent
  AddedTokenMatcher added_;
  std::vector<bool> raw_text_;  // decode as written (added tokens), not through the byte map

  static constexpr size_t kCacheLimit = 1 << 16;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int>> cache_;
};

}  // namespace toga
