// toga generate: text from a prompt, a chat question, or (empty prompt) from BOS alone.
#include <algorithm>
#include <cstdio>

#include "cli/commands.h"
#include "cli/common.h"
#include "model/generate.h"
#include "tokenizer/chat.h"
#include "util/error.h"

namespace toga::cli {

namespace {

// Bytes of s that form complete UTF-8 characters (a streamed piece may end inside one).
size_t complete_utf8_prefix(const std::string& s) {
  size_t i = s.size();
  size_t back = 0;
  while (i > 0 && back < 4) {
    const unsigned char c = static_cast<unsigned char>(s[i - 1]);
    if ((c & 0xC0) != 0x80) {
      const size_t need = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
      return back + 1 >= need ? s.size() : i - 1;
    }
    --i;
    ++back;
  }
  return s.size();
}

}  // namespace

void register_generate(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "generate text (greedy or seeded sampling)");
  struct Opts {
    CommonOptions common;
    std::string model, prompt, chat, system;
    SamplingOptions sampling;
    bool raw_special = false;
    std::string engine = "auto";
  };
  auto o = std::make_shared<Opts>();
  o->sampling.max_new_tokens = 256;
  cmd->add_option("model", o->model, "model: HF directory, .gguf file or llama2.c .bin")->required();
  cmd->add_option("--prompt,-p", o->prompt, "prompt text (default: start from BOS alone)");
  cmd->add_option("--chat", o->chat, "a user message, wrapped in the model's chat template");
  cmd->add_option("--system", o->system, "system message for --chat (default: the template's own)");
  cmd->add_option("--max-tokens,-n", o->sampling.max_new_tokens, "tokens to generate")->capture_default_str();
  cmd->add_option("--temperature", o->sampling.temperature, "0 = greedy")->capture_default_str();
  cmd->add_option("--top-p", o->sampling.top_p, "nucleus sampling mass")->capture_default_str();
  cmd->add_option("--seed", o->sampling.seed, "sampling seed")->capture_default_str();
  cmd->add_flag("--special", o->raw_special, "parse control tokens written in --prompt");
  add_engine_option(cmd, o->engine);
  add_common_options(cmd, o->common);
  cmd->callback([o] {
    apply_common_options(o->common);
    auto lm = load_model_and_tokenizer(o->model, o->common);
    const Tokenizer& tok = *lm.tokenizer;
    std::vector<int> prompt;
    if (!o->chat.empty()) {
      std::vector<ChatMessage> msgs;
      if (!o->system.empty()) msgs.push_back({"system", o->system});
      msgs.push_back({"user", o->chat});
      prompt = encode_chat(tok, msgs, /*add_generation_prompt=*/true);
    } else {
      prompt = tok.encode(o->prompt, o->raw_special);
      if (tok.add_bos && tok.bos_id >= 0) prompt.insert(prompt.begin(), tok.bos_id);
    }
    if (prompt.empty()) {
      if (tok.bos_id < 0) fail("empty prompt and the tokenizer has no BOS token to start from");
      prompt.push_back(tok.bos_id);
    }
    auto& stops = o->sampling.stop_ids;
    if (tok.eos_id >= 0) stops.push_back(tok.eos_id);
    if (tok.bos_id >= 0) stops.push_back(tok.bos_id);  // llama2.c's run.c stops on BOS too
    for (int id : lm.model.config.eos_token_ids) stops.push_back(id);

    const auto runtime = choose_engine(lm.model, o->common, o->engine, "generate");
    std::vector<int> generated;
    size_t printed = 0;
    GenerateStats stats;
    const auto on_token = [&](int id) {
      generated.push_back(id);
      const std::string text = tok.decode(generated);
      const size_t upto = complete_utf8_prefix(text);
      if (upto > printed) {
        std::fwrite(text.data() + printed, 1, upto - printed, stdout);
        std::fflush(stdout);
        printed = upto;
      }
    };
    const auto out = runtime ? generate(*runtime, prompt, o->sampling, on_token, &stats)
                             : generate(lm.model, prompt, o->sampling, on_token, &stats);
    const std::string text = tok.decode(out);
    if (text.size() > printed) std::fwrite(text.data() + printed, 1, text.size() - printed, stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
    std::fprintf(stderr, "[generate] %s: prompt %lld tokens at %.1f tokens/s, %lld generated at %.1f tokens/s\n",
                 runtime ? "runtime forward" : "libtorch forward", (long long)stats.prompt_tokens,
                 double(stats.prompt_tokens) / std::max(stats.prefill_seconds, 1e-9), (long long)stats.generated_tokens,
                 double(stats.generated_tokens) / std::max(stats.decode_seconds, 1e-9));
  });
}

}  // namespace toga::cli
