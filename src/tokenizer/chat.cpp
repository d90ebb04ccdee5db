#include "tokenizer/chat.h"

#include <algorithm>

#include "util/error.h"

namespace toga {

namespace {

// A Jinja template reduced to what decides its output: text between tags (after the white-space
// control transformers applies) and tag bodies without insignificant white space, string literals
// decoded and delimited by \x01 ... \x02 so that quoting and escaping styles compare equal.
struct JinjaToken {
  char kind;  // 'T' text, 'E' {{ expression }}, 'S' {% statement %}
  std::string body;
  bool operator==(const JinjaToken& o) const { return kind == o.kind && body == o.body; }
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::vector<JinjaToken> canonical_jinja(const std::string& src) {
  std::vector<JinjaToken> out;
  auto push_text = [&](std::string t) {
    if (t.empty()) return;
    if (!out.empty() && out.back().kind == 'T')
      out.back().body += t;
    else
      out.push_back({'T', std::move(t)});
  };
  bool strip_leading_ws = false;  // the previous tag ended with '-'
  bool trim_newline = false;      // trim_blocks: the previous tag was a block or comment
  size_t i = 0;
  const size_t n = src.size();
  while (i <= n) {
    size_t p = src.find('{', i);
    while (p != std::string::npos && p + 1 < n && src[p + 1] != '{' && src[p + 1] != '%' && src[p + 1] != '#')
      p = src.find('{', p + 1);
    if (p != std::string::npos && p + 1 >= n) p = std::string::npos;
    const size_t text_end = p == std::string::npos ? n : p;
    std::string text = src.substr(i, text_end - i);
    if (strip_leading_ws) {
      size_t k = 0;
      while (k < text.size() && is_space(text[k])) ++k;
      text.erase(0, k);
    } else if (trim_newline && !text.empty() && text[0] == '\n') {
      text.erase(0, 1);
    }
    if (p == std::string::npos) {
      push_text(std::move(text));
      break;
    }
    const char kind = src[p + 1];
    size_t body_start = p + 2;
    if (body_start < n && src[body_start] == '-') {
      while (!text.empty() && is_space(text.back())) text.pop_back();
      ++body_start;
    } else if (kind != '{') {
      // lstrip_blocks: spaces and tabs between a line start and a block tag are dropped.
      size_t q = p;
      while (q > i && (src[q - 1] == ' ' || src[q - 1] == '\t')) --q;
      if (q == 0 || src[q - 1] == '\n') text.erase(text.size() - std::min(text.size(), p - q));
    }
    push_text(std::move(text));

    const char close = kind == '{' ? '}' : kind;
    std::string body;
    size_t j = body_start;
    bool closed = false;
    strip_leading_ws = false;
    while (j < n) {
      const char c = src[j];
      if (c == '\'' || c == '"') {
        std::string lit;
        ++j;
        while (j < n && src[j] != c) {
          if (src[j] == '\\' && j + 1 < n) {
            const char e = src[j + 1];
            lit += e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
            j += 2;
          } else {
            lit += src[j++];
          }
        }
        if (j >= n) fail("chat template: unterminated string literal");
        ++j;
        body += '\x01' + lit + '\x02';
        continue;
      }
      if (c == '-' && j + 2 < n && src[j + 1] == close && src[j + 2] == '}') {
        strip_leading_ws = true;
        j += 3;
        closed = true;
        break;
      }
      if (c == close && j + 1 < n && src[j + 1] == '}') {
        j += 2;
        closed = true;
        break;
      }
      if (!is_space(c)) body += c;
      ++j;
    }
    if (!closed) fail("chat template: unterminated {}{} tag", '{', kind);
    if (kind != '#') out.push_back({kind == '{' ? 'E' : 'S', body});
    trim_newline = kind != '{';
    i = j;
  }
  return out;
}

constexpr const char* kSystemPlaceholder = "@@TOGA_DEFAULT_SYSTEM@@";

// ChatML with a default system message (SmolLM2, Qwen2), written out by hand.
const std::string kChatMLDefaultSystem =
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n@@TOGA_DEFAULT_SYSTEM@@<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

// Plain ChatML, no default system message.
const std::string kChatML =
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

// Compares token by token; a reference body holding the placeholder matches any single literal
// in its place, which is returned through `captured`.
bool match(const std::vector<JinjaToken>& got, const std::vector<JinjaToken>& ref, std::string* captured) {
  if (got.size() != ref.size()) return false;
  for (size_t k = 0; k < got.size(); ++k) {
    const size_t at = ref[k].body.find(kSystemPlaceholder);
    if (at == std::string::npos) {
      if (!(got[k] == ref[k])) return false;
      continue;
    }
    const std::string pre = ref[k].body.substr(0, at);
    const std::string post = ref[k].body.substr(at + std::string(kSystemPlaceholder).size());
    const std::string& b = got[k].body;
    if (got[k].kind != ref[k].kind || b.size() < pre.size() + post.size() || b.compare(0, pre.size(), pre) != 0 ||
        b.compare(b.size() - post.size(), post.size(), post) != 0)
      return false;
    std::string mid = b.substr(pre.size(), b.size() - pre.size() - post.size());
    if (mid.find_first_of("\x01\x02") != std::string::npos) return false;
    if (captured) *captured = std::move(mid);
  }
  return true;
}

}  // namespace

ChatTemplateInfo detect_chat_template(const std::string& source) {
  if (source.empty()) fail("the tokenizer has no chat template");
  const auto got = canonical_jinja(source);
  ChatTemplateInfo info;
  info.family = "chatml";
  if (match(got, canonical_jinja(kChatMLDefaultSystem), &info.default_system)) {
    info.has_default_system = true;
    return info;
  }
  if (match(got, canonical_jinja(kChatML), nullptr)) return info;
  std::string head = source.substr(0, 300);
  fail("unsupported chat template (toga renders ChatML as SmolLM2 and Qwen2 ship it, with or without a default "
       "system message); the template begins: {}",
       head);
}

std::string render_chat(const ChatTemplateInfo& info, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt) {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i == 0 && info.has_default_system && messages[0].role != "system")
      out += "<|im_start|>system\n" + info.default_system + "<|im_end|>\n";
    out += "<|im_start|>" + messages[i].role + "\n" + messages[i].content + "<|im_end|>\n";
  }
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

std::string apply_chat_template(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt) {
  if (tok.chat_template.empty()) fail_file(tok.source, "the tokenizer has no chat template");
  const ChatTemplateInfo info = [&] {
    try {
      return detect_chat_template(tok.chat_template);
    } catch (const Error& e) {
      fail_file(tok.source, "{}", e.what());
    }
  }();
  for (const char* t : {"<|im_start|>", "<|im_end|>"}) {
    const int id = tok.piece_to_id(t);
    if (id < 0 || !tok.is_control(id))
      fail_file(tok.source, "the chat template writes {} but it is not a control token of this tokenizer", t);
  }
  return render_chat(info, messages, add_generation_prompt);
}

std::vector<int> encode_chat(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                             bool add_generation_prompt) {
  return tok.encode(apply_chat_template(tok, messages, add_generation_prompt), /*allow_special=*/true);
}

}  // namespace toga
