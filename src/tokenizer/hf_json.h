// Hugging Face tokenizer files: reading the metadata that sits beside a tokenizer
// (tokenizer_config.json, config.json, chat_template.jinja) and writing a byte-level BPE out as
// tokenizer.json + tokenizer_config.json that the `tokenizers` / `transformers` packages load.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "tokenizer/tokenizer.h"

namespace toga {

class BPETokenizer;

// True when a tokenizer.json describes a SentencePiece-style model (byte fallback, Metaspace or a
// "▁" normalizer) rather than byte-level BPE; such directories are read through tokenizer.model.
bool tokenizer_json_is_sentencepiece_style(const nlohmann::json& j);

// Applies what an HF directory says about a tokenizer: tokenizer_config.json (bos/eos/pad/unk
// tokens, add_bos_token, add_eos_token, chat_template), chat_template.jinja, and config.json's
// bos/eos ids where the tokenizer files name none. Absent files are fine.
void apply_hf_tokenizer_config(Tokenizer& tok, const std::string& dir);

// The tokenizer.json of a byte-level BPE: BPE model with vocab and merges, the pre-tokenizer
// (ByteLevel / Digits+ByteLevel / Split+ByteLevel), ByteLevel decoder, added tokens with their
// special flags, and a TemplateProcessing post-processor when BOS/EOS are added.
nlohmann::ordered_json tokenizer_json(const BPETokenizer& tok);
// tokenizer_config.json for any tokenizer: bos/eos/pad/unk tokens, add_bos_token, add_eos_token,
// chat_template, added_tokens_decoder, tokenizer_class.
nlohmann::ordered_json tokenizer_config_json(const Tokenizer& tok);

// Writes tokenizer.json (byte-level BPE only; other kinds are a toga::Error) atomically.
void write_tokenizer_json(const Tokenizer& tok, const std::string& path);
void write_tokenizer_config_json(const Tokenizer& tok, const std::string& path);

}  // namespace toga

#include <map>

namespace toga {

// The tokenizer files of a Hugging Face directory for any loaded tokenizer, name -> content:
// tokenizer.json for byte-level BPE, tokenizer.model for SentencePiece-style vocabularies (llama2.c,
// GGUF `llama`), and tokenizer_config.json. Verbs that write checkpoints bundle these.
std::map<std::string, std::string> hf_tokenizer_files(const Tokenizer& tok);

}  // namespace toga
