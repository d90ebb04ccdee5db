// Chat templates: recognition of SmolLM2's (and Qwen2's) ChatML template from its source, the exact
// prompt, errors for templates toga does not know, and (when jinja2 is installed) the rendering
// checked against jinja2 itself with transformers' settings.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

#include <nlohmann/json.hpp>

#include "../test_util.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace toga {
namespace {

const char* kSmolSystem = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

// Qwen2-Instruct's template: SmolLM2's structure with another default system message.
const std::string kQwen2Template =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou "
    "are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|im_start|>assistant\\n' }}{% endif %}";

TEST(Chat, SmolLM2TemplateFromGguf) {
  TOGA_REQUIRE_FILE(test::smollm2_path());
  const auto tok = load_tokenizer(test::smollm2_path());
  const auto info = detect_chat_template(tok->chat_template);
  EXPECT_EQ(info.family, "chatml");
  EXPECT_TRUE(info.has_default_system);
  EXPECT_EQ(info.default_system, kSmolSystem);

  const std::string prompt = apply_chat_template(*tok, {{"user", "What is 2+2?"}}, true);
  EXPECT_EQ(prompt, std::string("<|im_start|>system\n") + kSmolSystem +
                        "<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(apply_chat_template(*tok, {{"system", "Be brief."}, {"user", "Hi"}}, false),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
  EXPECT_EQ(apply_chat_template(*tok, {}, true), "<|im_start|>assistant\n");

  const auto ids = encode_chat(*tok, {{"user", "Hi"}}, true);
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(ids[0], 1);  // <|im_start|>
  EXPECT_EQ(tok->decode(ids), apply_chat_template(*tok, {{"user", "Hi"}}, true));
  size_t im_end = 0;
  for (int id : ids) im_end += id == 2;
  EXPECT_EQ(im_end, 2u);
}

TEST(Chat, Qwen2AndPlainChatML) {
  const auto info = detect_chat_template(kQwen2Template);
  EXPECT_TRUE(info.has_default_system);
  EXPECT_EQ(info.default_system, "You are a helpful assistant.");
  const std::string plain =
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
      "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
  const auto p = detect_chat_template(plain);
  EXPECT_FALSE(p.has_default_system);
  EXPECT_EQ(render_chat(p, {{"user", "x"}}, true), "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n");
}

// Block tags on their own lines: trim_blocks/lstrip_blocks remove that layout, and the "-" on the
// expressions swallows the newline after them, so this renders exactly like the original.
const std::string kReformatted =
    "{% for message in messages %}\n"
    "  {% if loop.first and messages[0][\"role\"] != \"system\" %}\n"
    "{{ \"<|im_start|>system\\nYou are X<|im_end|>\\n\" -}}\n"
    "  {% endif %}\n"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}\n"
    "{% endfor %}\n"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

TEST(Chat, ReformattedCopyIsRecognisedButChangedOutputIsNot) {
  const std::string& reformatted = kReformatted;
  const auto info = detect_chat_template(reformatted);
  EXPECT_EQ(info.default_system, "You are X");
  // Without a "-" the newline after that expression would be part of the prompt.
  std::string changed = reformatted;
  changed.replace(changed.rfind("-}}"), 3, "}}");
  EXPECT_THROW(detect_chat_template(changed), Error);
}

TEST(Chat, UnknownTemplatesAreErrors) {
  const std::string llama3 =
      "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
      "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{{ content }}"
      "{% endfor %}";
  try {
    detect_chat_template(llama3);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unsupported chat template"), std::string::npos) << e.what();
  }
  EXPECT_THROW(detect_chat_template(""), Error);
  // ChatML with an extra feature (a different generation prompt) is not ChatML as toga renders it.
  std::string other = kQwen2Template;
  other.replace(other.find("assistant\\n"), 11, "bot\\n");
  EXPECT_THROW(detect_chat_template(other), Error);
  EXPECT_THROW(detect_chat_template("{{ unterminated"), Error);
}

TEST(Chat, TokenizerWithoutTemplateOrControlTokensIsAnError) {
  TOGA_REQUIRE_FILE(test::stories260k_path());
  auto tok = load_tokenizer(test::stories260k_path());
  EXPECT_THROW(apply_chat_template(*tok, {{"user", "hi"}}, true), Error);
  tok->chat_template = kQwen2Template;  // <|im_start|> is not one of its tokens
  try {
    apply_chat_template(*tok, {{"user", "hi"}}, true);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("<|im_start|>"), std::string::npos) << e.what();
  }
}

TEST(Chat, RenderingMatchesJinja2) {
  TOGA_REQUIRE_FILE(test::smollm2_path());
  if (std::system("python3 -c 'import jinja2' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "python3 with the `jinja2` package is not available";
  const auto tok = load_tokenizer(test::smollm2_path());
  const std::vector<std::vector<ChatMessage>> convs = {
      {{"user", "Hi"}},
      {{"system", "Be terse."}, {"user", "Why?"}},
      {{"user", "a"}, {"assistant", "b"}, {"user", "c\n\nd"}},
      {},
      {{"assistant", "first"}, {"system", "late system"}},
      {{"user", "  spaces  and <|im_end|> inside "}}};
  for (const std::string& tmpl : {tok->chat_template, kQwen2Template, kReformatted}) {
    nlohmann::json req;
    req["template"] = tmpl;
    req["cases"] = nlohmann::json::array();
    std::vector<std::string> mine;
    const auto info = detect_chat_template(tmpl);
    for (const auto& c : convs)
      for (bool gen : {false, true}) {
        nlohmann::json msgs = nlohmann::json::array();
        for (const auto& m : c) msgs.push_back({{"role", m.role}, {"content", m.content}});
        req["cases"].push_back({{"messages", msgs}, {"add_generation_prompt", gen}});
        mine.push_back(render_chat(info, c, gen));
      }
    test::ScratchDir dir;
    {
      std::ofstream f(dir / "req.json");
      f << req.dump();
    }
    const std::string cmd = fmt::format("python3 '{}/tests/tokenizer/render_chat_template.py' '{}' '{}'",
                                        TOGA_SOURCE_DIR, dir / "req.json", dir / "resp.json");
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    std::ifstream f(dir / "resp.json");
    const auto resp = nlohmann::json::parse(f);
    ASSERT_EQ(resp.size(), mine.size());
    for (size_t i = 0; i < mine.size(); ++i) EXPECT_EQ(mine[i], resp[i].get<std::string>()) << "case " << i;
  }
}

}  // namespace
}  // namespace toga
