// SentencePiece tokenizer.model files (a serialized ModelProto), read and written directly in the
// protobuf wire format for the fields toga needs: the pieces with scores and types, the model type,
// and the normalizer settings that decide whether toga's own SPMTokenizer encodes exactly like
// libsentencepiece (BPE, identity normalization, dummy prefix, no white-space folding).
#pragma once

#include <memory>
#include <string>

#include "tokenizer/spm.h"

namespace toga {

struct SentencePieceModelInfo {
  SPMConfig config;  // pieces as stored (with U+2581), scores, types; add_dummy_prefix
  int model_type = 1;  // 1 unigram, 2 BPE, 3 word, 4 char
  std::string normalizer_name;
  bool has_charsmap = false;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
  bool treat_whitespace_as_suffix = false;
  bool byte_fallback = false;
  int unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
};

SentencePieceModelInfo read_sentencepiece_model(const std::string& path);

// Why toga's SPMTokenizer would not reproduce libsentencepiece for this model ("" when it does).
std::string spm_incompatibility(const SentencePieceModelInfo& info);

// A ModelProto for a score-based vocabulary (BPE, identity normalization, dummy prefix, byte
// fallback when the vocabulary has byte pieces): lets a llama2.c or GGUF vocabulary be saved as the
// tokenizer.model of a Hugging Face directory.
std::string sentencepiece_model_proto(const SPMTokenizer& tok);
void write_sentencepiece_model(const SPMTokenizer& tok, const std::string& path);

}  // namespace toga
