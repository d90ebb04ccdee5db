// Pre-tokenizers of byte-level BPE vocabularies, written out by hand from their regexes (std::regex
// has no Unicode classes). Each returns the byte ranges of the pieces BPE then runs on; the pieces
// cover the input exactly, in order.
//
//   Gpt2    's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   SmolLM  every \p{N} alone (HF Digits(individual_digits=true)), then Gpt2 on the rest
//   Llama3  (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*
//           |\s*[\r\n]+|\s+(?!\S)|\s+
//   Qwen2   Llama3 with \p{N} instead of \p{N}{1,3} (its NFC normalizer is the tokenizer's job)
//
// \s is Unicode White_Space, as in Oniguruma (which Hugging Face tokenizers uses). Malformed UTF-8
// bytes count as [^\s\p{L}\p{N}].
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace toga {

enum class PreTokenizer { Gpt2, SmolLM, Llama3, Qwen2 };

// The canonical llama.cpp `tokenizer.ggml.pre` name of each kind ("gpt-2", "smollm", "llama-bpe", "qwen2").
const char* pre_tokenizer_name(PreTokenizer p);

// Maps a GGUF `tokenizer.ggml.pre` value; an unknown name is a toga::Error that names it and `where`.
PreTokenizer pre_tokenizer_from_gguf_name(const std::string& name, const std::string& where);

// The regex of a Split pre-tokenizer in tokenizer.json, when it is one of the kinds above.
const char* pre_tokenizer_regex(PreTokenizer p);  // nullptr for Gpt2/SmolLM (ByteLevel's own regex)

using Piece = std::pair<size_t, size_t>;  // [begin, end) byte offsets into the text
void pre_tokenize(PreTokenizer kind, std::string_view text, std::vector<Piece>& out);

}  // namespace toga
