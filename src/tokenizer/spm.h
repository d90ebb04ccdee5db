// SentencePiece-style BPE by piece scores, as llama2.c's run.c and SentencePiece's BPE model
// encode: the text (with a dummy-prefix space) is split into characters, then the adjacent pair
// whose concatenation is the best-scoring vocabulary piece is merged, leftmost first among equal
// scores, until no pair is a piece. Characters outside the vocabulary become <0xXX> byte tokens
// (and never merge: in a BPE-trained vocabulary every character of a piece is itself a piece).
//
// Equal to libsentencepiece for BPE models with identity normalization (checked on Llama-2), and
// several times faster on long text.
// Serves llama2.c tokenizer.bin files and GGUF vocabularies with tokenizer.ggml.model = llama.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/added_tokens.h"
#include "tokenizer/tokenizer.h"

namespace toga {

class GGUFFile;

struct SPMConfig {
  std::vector<std::string> pieces;  // by id, as stored: "▁the" (GGUF) or " the" (llama2.c)
  std::vector<float> scores;        // by id
  std::vector<TokenType> types;     // by id
  bool add_dummy_prefix = true;     // SentencePiece's add_dummy_prefix / llama.cpp add_space_prefix
};

class SPMTokenizer final : public Tokenizer {
 public:
  SPMTokenizer(SPMConfig config, const std::string& where);
  SPMTokenizer(const SPMTokenizer&) = delete;  // mergeable_ points into text_
  SPMTokenizer& operator=(const SPMTokenizer&) = delete;

  // llama2.c tokenizer.bin: int32 max_token_len, then per token float32 score, int32 length, bytes.
  // The file does not say which tokens are special; as in llama2.c, 0 is <unk>, 1 BOS and 2 EOS
  // (their pieces read as "<s>" / "</s>"), and "<0xXX>" pieces are byte tokens.
  static std::unique_ptr<SPMTokenizer> from_llama2c(const std::string& path);
  static std::unique_ptr<SPMTokenizer> from_gguf(const GGUFFile& file);

  std::vector<int> encode(const std::string& text, bool allow_special = false) const override;
  // Control tokens are invisible and the dummy-prefix space of the first piece (at the start or
  // after BOS) is dropped, as SentencePiece and llama2.c decode.
  std::string decode(const std::vector<int>& ids) const override;
  int vocab_size() const override { return static_cast<int>(config_.pieces.size()); }
  std::string id_to_piece(int id) const override;
  int piece_to_id(const std::string& piece) const override;
  bool is_control(int id) const override;
  const char* kind() const override { return "spm"; }

  const SPMConfig& config() const { return config_; }
  float score(int id) const { return config_.scores.at(id); }

 private:
  void encode_segment(std::string_view text, bool dummy_prefix, std::vector<int>& out) const;
  void merge_range(const std::string& s, size_t begin, size_t end, std::vector<int>& out) const;
  void emit_symbol(std::string_view piece, const std::unordered_map<std::string_view, size_t>& splits,
                   std::vector<int>& out) const;

  SPMConfig config_;
  std::vector<std::string> text_;                       // pieces with U+2581 written as ' '
  std::unordered_map<std::string_view, int> mergeable_;  // views into text_
  std::unordered_map<uint64_t, int> pair_to_piece_;      // (left id, right id) -> joined piece
  std::unordered_map<std::string, int> piece_to_id_;    // stored form
  int byte_id_[256];
  bool barrier_[256];  // ASCII bytes that are in no multi-character piece
  AddedTokenMatcher added_;
};

}  // namespace toga
