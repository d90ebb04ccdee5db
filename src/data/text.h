// Evaluation text, assembled exactly as the published protocols do before tokenizing.
#pragma once

#include <string>

namespace toga {

// The whole file as bytes; a missing or unreadable file is a toga::Error naming it.
std::string read_text(const std::string& path);

// WikiText-2 as GPTQ (and Atom, QuaRot, ...) evaluate it: every line of the raw file keeps its
// trailing "\n", except that a line holding only white space becomes ""; the lines are joined with
// "\n\n" (HF datasets' rows joined by "\n\n"). Tokenized once, this gives 341,468 Llama-2 tokens
// (+ BOS) and 304,978 SmolLM2 tokens for wiki.test.raw.
std::string gptq_wikitext_text(const std::string& raw_path);

// The `field` strings of a JSON-lines file joined with `separator` (e.g. C4 documents); at most
// max_docs of them (0 = all). Lines that are not JSON objects with that string field are errors.
std::string jsonl_text(const std::string& path, const std::string& field, const std::string& separator,
                       size_t max_docs = 0);

}  // namespace toga
