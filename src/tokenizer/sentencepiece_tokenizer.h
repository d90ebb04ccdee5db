// A SentencePiece tokenizer.model through libsentencepiece itself: the reference implementation,
// used for Hugging Face directories that ship tokenizer.model (Llama-2, TinyLlama, Mistral).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tokenizer/added_tokens.h"
#include "tokenizer/tokenizer.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace toga {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // BOS/EOS/unk/pad come from the model; add_bos defaults to true (every Llama-family
  // SentencePiece model prepends BOS) until a tokenizer_config.json says otherwise.
  explicit SentencePieceTokenizer(const std::string& model_path);
  ~SentencePieceTokenizer() override;

  // Control pieces written in the text are matched (allow_special) before SentencePiece sees the
  // stretches between them; each stretch then gets its own dummy prefix, as in llama.cpp.
  std::vector<int> encode(const std::string& text, bool allow_special = false) const override;
  std::string decode(const std::vector<int>& ids) const override;
  int vocab_size() const override;
  std::string id_to_piece(int id) const override;
  int piece_to_id(const std::string& piece) const override;
  bool is_control(int id) const override;
  const char* kind() const override { return "sentencepiece"; }

  float score(int id) const;
  bool is_byte(int id) const;
  bool is_unknown(int id) const;
  bool is_unused(int id) const;

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  AddedTokenMatcher control_;
};

}  // namespace toga
