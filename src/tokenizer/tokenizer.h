// One interface over every tokenizer a checkpoint can bring: SentencePiece tokenizer.model,
// llama2.c tokenizer.bin, Hugging Face tokenizer.json (byte-level BPE) and GGUF vocabularies.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace toga {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Text to ids, without BOS/EOS. With allow_special, control/added tokens written in the text
  // (e.g. "<|im_start|>") become their ids; otherwise they are encoded as plain text.
  virtual std::vector<int> encode(const std::string& text, bool allow_special = false) const = 0;
  virtual std::string decode(const std::vector<int>& ids) const = 0;
  virtual int vocab_size() const = 0;
  virtual std::string id_to_piece(int id) const = 0;  // the vocabulary entry, for debugging

  // The id of a vocabulary entry written as id_to_piece() gives it, or -1.
  virtual int piece_to_id(const std::string& piece) const = 0;
  // Control tokens (BOS, EOS, <|im_start|>, ...): never produced from plain text.
  virtual bool is_control(int id) const = 0;
  // "bpe" (byte-level BPE), "spm" (SentencePiece-style vocabulary by scores) or "sentencepiece"
  // (libsentencepiece on a tokenizer.model).
  virtual const char* kind() const = 0;

  // encode() plus BOS/EOS as the model's tokenizer config says (add_bos / add_eos).
  std::vector<int> encode_for_model(const std::string& text, bool allow_special = false) const;

  int bos_id = -1;
  int eos_id = -1;
  int pad_id = -1;  // -1 if none
  int unk_id = -1;  // -1 if none
  bool add_bos = false;
  bool add_eos = false;
  std::string chat_template;  // Jinja source as shipped, empty if none
  std::string source;         // the file it was loaded from, for messages
};

// Finds and loads the tokenizer that belongs to a model path: tokenizer.json or tokenizer.model in an
// HF directory, the vocabulary inside a GGUF file, or for a llama2.c .bin an explicit tokenizer path
// (or tokenizer.bin / tok<vocab>.bin beside it). `tokenizer_path` overrides the search.
//
// tokenizer_path may be a tokenizer.json, a tokenizer.model, a llama2.c tokenizer.bin, a .gguf file
// or an HF directory. A model directory whose tokenizer.json is SentencePiece-style (Metaspace,
// byte fallback) is read through its tokenizer.model. For a llama2.c checkpoint the tokenizer's
// vocabulary size must equal the model's.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_path, const std::string& tokenizer_path = "");

}  // namespace toga
