// Chat prompts for the template families toga knows, recognised from the template source. There is
// no general Jinja engine: a template that is not recognised is an error rather than a prompt the
// model was never trained on.
//
// Recognised: ChatML, as SmolLM2 and Qwen2 ship it (a default system message when the first
// message is not a system message) and the plain ChatML template without one. Recognition compares
// the template's structure (Jinja tags with white space and quoting normalized, text between tags
// as written, with transformers' trim_blocks/lstrip_blocks applied), so a reformatted copy of a
// known template is still recognised but any change in what it renders is not.
#pragma once

#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace toga {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", ...
  std::string content;
};

struct ChatTemplateInfo {
  std::string family;              // "chatml"
  bool has_default_system = false;
  std::string default_system;      // used when messages[0] is not a system message
};

// Throws toga::Error naming what was expected when the source is not a known template.
ChatTemplateInfo detect_chat_template(const std::string& source);

std::string render_chat(const ChatTemplateInfo& info, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt);

// The prompt text for tok.chat_template; encode it with allow_special = true (the template writes
// its own control tokens, which must be control tokens of this tokenizer: checked).
std::string apply_chat_template(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt);

// apply_chat_template + encode(allow_special = true), without BOS/EOS, as transformers'
// apply_chat_template(tokenize=True) does (the template itself writes any BOS it wants).
std::vector<int> encode_chat(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                             bool add_generation_prompt);

}  // namespace toga
