// Byte-level BPE against the Hugging Face `tokenizers` package: hf_bpe_oracle.py builds reference
// tokenizers from the SmolLM2 GGUF's own vocabulary and merges (read with the standard library, not
// with toga) for each pre-tokenizer toga implements, and the ids must be identical on a few thousand
// varied strings, with and without control tokens allowed. The tokenizer.json toga exports must load
// in `tokenizers` and give the same ids, and toga must read it back to the same tokenizer.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <atomic>
#include <filesystem>
#include <functional>
#include <map>
#include <thread>

#include <nlohmann/json.hpp>

#include "data/text.h"
#include "io/gguf.h"
#include "../test_util.h"
#include "tokenizer/bpe.h"
#include "tokenizer/hf_json.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer_test_strings.h"
#include "tokenizer/unicode.h"
#include "util/error.h"

namespace toga {
namespace {

using test::shared_path;
using test::smollm2_path;

std::string printable(const std::string& s) {
  std::string o;
  for (unsigned char c : s) {
    if (c == '\n')
      o += "\\n";
    else if (c == '\r')
      o += "\\r";
    else if (c == '\t')
      o += "\\t";
    else if (c < 32)
      o += fmt::format("\\x{:02x}", c);
    else
      o += static_cast<char>(c);
  }
  return o;
}

std::string ids_str(const std::vector<int>& ids) { return fmt::format("[{}]", fmt::join(ids, ", ")); }

const BPETokenizer& as_bpe(const Tokenizer& t) {
  const auto* b = dynamic_cast<const BPETokenizer*>(&t);
  if (!b) throw Error("not a BPE tokenizer");
  return *b;
}

// Counts mismatches and reports the first few.
void expect_same_ids(const std::string& label, const std::vector<std::string>& strings,
                     const nlohmann::json& expected, const std::function<std::vector<int>(const std::string&)>& encode) {
  ASSERT_EQ(expected.size(), strings.size()) << label;
  size_t bad = 0;
  for (size_t i = 0; i < strings.size(); ++i) {
    const auto want = expected[i].get<std::vector<int>>();
    const auto got = encode(strings[i]);
    if (got != want) {
      if (++bad <= 5)
        ADD_FAILURE() << label << " string " << i << " \"" << printable(strings[i]) << "\"\n  toga " << ids_str(got)
                      << "\n  HF   " << ids_str(want);
    }
  }
  EXPECT_EQ(bad, 0u) << label << ": " << bad << " of " << strings.size() << " strings differ";
}

bool python_tokenizers_available() {
  return std::system("python3 -c 'import tokenizers' >/dev/null 2>&1") == 0;
}

// The SmolLM2 vocabulary in a GGUF file that names another pre-tokenizer.
void write_gguf_variant(const GGUFFile& real, const std::string& pre, const std::string& path) {
  GGUFWriter w;
  w.set_string("general.architecture", "llama");
  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_string("tokenizer.ggml.pre", pre);
  w.set_string_array("tokenizer.ggml.tokens", real.get_string_array("tokenizer.ggml.tokens"));
  w.set_string_array("tokenizer.ggml.merges", real.get_string_array("tokenizer.ggml.merges"));
  std::vector<GGUFValue> types;
  for (auto t : real.get_int_array("tokenizer.ggml.token_type")) types.push_back(GGUFValue::make_int(GGUFType::INT32, t));
  w.set("tokenizer.ggml.token_type", GGUFValue::make_array(GGUFType::INT32, types));
  w.set_uint32("tokenizer.ggml.bos_token_id", 1);
  w.set_uint32("tokenizer.ggml.eos_token_id", 2);
  w.write(path);
}

TEST(BPEvsHuggingFace, SmolLM2VocabularyAllPreTokenizers) {
  TOGA_REQUIRE_FILE(smollm2_path());
  if (!python_tokenizers_available())
    GTEST_SKIP() << "python3 with the `tokenizers` package is not available (pip install tokenizers)";

  const auto tok = load_tokenizer(smollm2_path());
  const BPETokenizer& smol = as_bpe(*tok);
  ASSERT_EQ(smol.config().pre, PreTokenizer::SmolLM);

  test::TestStringOptions opt;
  for (int id = 0; id < tok->vocab_size(); ++id)
    if (tok->is_control(id)) opt.control_tokens.push_back(tok->id_to_piece(id));
  ASSERT_EQ(opt.control_tokens.size(), 17u);
  const auto strings = test::tokenizer_test_strings(opt);
  ASSERT_GE(strings.size(), 2000u);
  test::ScratchDir dir;

  // The same vocabulary and merges under each pre-tokenizer: the GGUF tokenizer itself (smollm), a
  // GGUF naming llama-bpe (so BOS is added and whole-word vocabulary hits skip the merges, as
  // llama.cpp does), and configurations built directly.
  std::map<std::string, std::unique_ptr<Tokenizer>> variants;
  variants["smollm"] = load_tokenizer(smollm2_path());
  write_gguf_variant(GGUFFile(smollm2_path()), "llama-bpe", dir / "llama3.gguf");
  variants["llama3"] = load_tokenizer(dir / "llama3.gguf");
  EXPECT_TRUE(variants["llama3"]->add_bos);
  EXPECT_TRUE(as_bpe(*variants["llama3"]).config().ignore_merges);
  for (auto [name, kind] : {std::pair{"gpt2", PreTokenizer::Gpt2}, std::pair{"qwen2", PreTokenizer::Qwen2}}) {
    BPEConfig c = smol.config();
    c.pre = kind;
    c.nfc = kind == PreTokenizer::Qwen2;
    variants[name] = std::make_unique<BPETokenizer>(std::move(c), std::string("smollm2-vocab-") + name);
    variants[name]->bos_id = 1;
    variants[name]->eos_id = 2;
  }
  variants["qwen2"]->add_eos = true;  // exercises the exported post-processor's EOS

  nlohmann::json req;
  req["gguf"] = smollm2_path();
  req["strings"] = strings;
  req["wikitext"] = shared_path("data/text/wikitext-2-raw/wiki.test.raw");
  for (const auto& [name, v] : variants) {
    std::filesystem::create_directories(dir / name);
    write_tokenizer_json(*v, dir / (name + "/tokenizer.json"));
    write_tokenizer_config_json(*v, dir / (name + "/tokenizer_config.json"));
    req["exported"][name] = dir / (name + "/tokenizer.json");
  }
  {
    std::ofstream f(dir / "request.json");
    f << req.dump();
  }
  const std::string cmd = fmt::format("python3 '{}/tests/tokenizer/hf_bpe_oracle.py' '{}' '{}'", TOGA_SOURCE_DIR,
                                      dir / "request.json", dir / "response.json");
  const int rc = std::system(cmd.c_str());
  ASSERT_EQ(rc, 0) << "oracle failed: " << cmd;
  nlohmann::json resp;
  {
    std::ifstream f(dir / "response.json");
    resp = nlohmann::json::parse(f);
  }

  for (const auto& [name, v] : variants) {
    const Tokenizer& t = *v;
    expect_same_ids(name + " plain", strings, resp[name]["plain"], [&](const std::string& s) { return t.encode(s, false); });
    expect_same_ids(name + " special", strings, resp[name]["special"],
                    [&](const std::string& s) { return t.encode(s, true); });

    // Decoding gives the text back, byte for byte (Qwen2's after NFC normalization).
    size_t bad_decode = 0;
    for (const auto& s : strings) {
      const std::string want = as_bpe(t).config().nfc ? unicode::nfc(s) : s;
      for (bool special : {false, true})
        if (t.decode(t.encode(s, special)) != want && ++bad_decode <= 5)
          ADD_FAILURE() << name << ": decode round trip failed for \"" << printable(s) << "\"";
    }
    EXPECT_EQ(bad_decode, 0u) << name;

    // The exported tokenizer.json: `tokenizers` loads it and agrees (BOS/EOS included) ...
    expect_same_ids(name + " exported tokenizer.json in HF", strings, resp["exported"][name],
                    [&](const std::string& s) { return t.encode_for_model(s, true); });
    size_t bad_hf_decode = 0;
    for (size_t i = 0; i < strings.size(); ++i) {
      const std::string mine = t.decode(t.encode_for_model(strings[i], true));
      if (resp["exported_decoded"][name][i].get<std::string>() != mine && ++bad_hf_decode <= 5)
        ADD_FAILURE() << name << ": HF decodes \"" << printable(resp["exported_decoded"][name][i]) << "\", toga \""
                      << printable(mine) << "\"";
    }
    EXPECT_EQ(bad_hf_decode, 0u) << name;
    // ... and toga reads the directory back to the same tokenizer.
    const auto back = load_tokenizer(dir / name);
    EXPECT_STREQ(back->kind(), "bpe");
    EXPECT_EQ(back->vocab_size(), t.vocab_size());
    EXPECT_EQ(back->bos_id, t.bos_id) << name;
    EXPECT_EQ(back->eos_id, t.eos_id) << name;
    EXPECT_EQ(back->pad_id, t.pad_id) << name;
    EXPECT_EQ(back->add_bos, t.add_bos) << name;
    EXPECT_EQ(back->add_eos, t.add_eos) << name;
    EXPECT_EQ(back->chat_template, t.chat_template) << name;
    const BPEConfig& a = as_bpe(*back).config();
    const BPEConfig& b = as_bpe(t).config();
    EXPECT_EQ(a.pre, b.pre) << name;
    EXPECT_EQ(a.nfc, b.nfc) << name;
    EXPECT_EQ(a.ignore_merges, b.ignore_merges) << name;
    EXPECT_EQ(a.tokens, b.tokens) << name;
    EXPECT_EQ(a.merges, b.merges) << name;
    for (int id = 0; id < t.vocab_size(); ++id) ASSERT_EQ(back->is_control(id), t.is_control(id)) << id;
    size_t bad_back = 0;
    for (const auto& s : strings)
      for (bool special : {false, true})
        if (back->encode(s, special) != t.encode(s, special)) ++bad_back;
    EXPECT_EQ(bad_back, 0u) << name;
  }

  // WikiText-2 test, GPTQ protocol: the oracle builds the text itself in Python.
  EXPECT_EQ(resp["wikitext_smollm_tokens"].get<int64_t>(), 304978);
}

TEST(BPE, TokenizerConfigJson) {
  TOGA_REQUIRE_FILE(smollm2_path());
  const auto tok = load_tokenizer(smollm2_path());
  const auto j = tokenizer_config_json(*tok);
  EXPECT_EQ(j["bos_token"], "<|im_start|>");
  EXPECT_EQ(j["eos_token"], "<|im_end|>");
  EXPECT_EQ(j["pad_token"], "<|im_end|>");
  EXPECT_EQ(j["unk_token"], "<|endoftext|>");
  EXPECT_EQ(j["add_bos_token"], false);
  EXPECT_EQ(j["add_eos_token"], false);
  EXPECT_EQ(j["chat_template"], tok->chat_template);
  EXPECT_EQ(j["tokenizer_class"], "PreTrainedTokenizerFast");
  EXPECT_EQ(j["added_tokens_decoder"].size(), 17u);
  EXPECT_EQ(j["added_tokens_decoder"]["1"]["content"], "<|im_start|>");
  EXPECT_EQ(j["added_tokens_decoder"]["1"]["special"], true);
  const auto tj = tokenizer_json(as_bpe(*tok));
  EXPECT_EQ(tj["model"]["type"], "BPE");
  EXPECT_EQ(tj["model"]["vocab"].size(), 49152u);
  EXPECT_EQ(tj["model"]["merges"].size(), 48900u);
  EXPECT_EQ(tj["model"]["merges"][0], "\xC4\xA0 t");
  EXPECT_EQ(tj["pre_tokenizer"]["pretokenizers"][0]["type"], "Digits");
  EXPECT_EQ(tj["decoder"]["type"], "ByteLevel");
  EXPECT_EQ(tj["added_tokens"].size(), 17u);
}

TEST(BPE, ConcurrentEncodingAgrees) {
  TOGA_REQUIRE_FILE(smollm2_path());
  const auto tok = load_tokenizer(smollm2_path());
  const auto strings = test::tokenizer_test_strings();
  std::vector<std::vector<int>> want;
  for (const auto& s : strings) want.push_back(tok->encode(s));
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (size_t i = t; i < strings.size(); i += 2)
        if (tok->encode(strings[i]) != want[i]) ++bad;
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST(BPE, SmolLM2WikiText2TokenCount) {
  TOGA_REQUIRE_FILE(smollm2_path());
  const auto wiki = shared_path("data/text/wikitext-2-raw/wiki.test.raw");
  TOGA_REQUIRE_FILE(wiki);
  const auto tok = load_tokenizer(smollm2_path());
  EXPECT_FALSE(tok->add_bos);
  const std::string text = gptq_wikitext_text(wiki);
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = tok->encode_for_model(text);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(ids.size(), 304978u);  // data README: llama.cpp's smollm pre-tokenizer gives 304,978
  std::printf("[ info ] SmolLM2 WikiText-2 test: %zu tokens in %.3f s (%.0f tokens/s, cold cache)\n", ids.size(), s,
              ids.size() / s);
  EXPECT_LT(s, 5.0);
  EXPECT_EQ(tok->decode(ids), text);
}

TEST(BPE, SmolLM2GgufMetadataAndKnownIds) {
  TOGA_REQUIRE_FILE(smollm2_path());
  const auto tok = load_tokenizer(smollm2_path());
  EXPECT_STREQ(tok->kind(), "bpe");
  EXPECT_EQ(tok->vocab_size(), 49152);
  EXPECT_EQ(as_bpe(*tok).config().merges.size(), 48900u);
  EXPECT_EQ(tok->bos_id, 1);
  EXPECT_EQ(tok->eos_id, 2);
  EXPECT_EQ(tok->pad_id, 2);
  EXPECT_FALSE(tok->add_bos);
  EXPECT_FALSE(tok->add_eos);
  EXPECT_EQ(tok->id_to_piece(1), "<|im_start|>");
  EXPECT_TRUE(tok->is_control(1));
  EXPECT_FALSE(tok->is_control(100));
  EXPECT_NE(tok->chat_template.find("<|im_start|>"), std::string::npos);
  // The same ids llama.cpp's tokenizer tests list for SmolLM2.
  EXPECT_EQ(tok->encode("Hello world! 123"), (std::vector<int>{19556, 905, 17, 216, 33, 34, 35}));
  EXPECT_EQ(tok->encode("  multiple   spaces"), (std::vector<int>{216, 2701, 256, 5600}));
  EXPECT_EQ(tok->encode("\n"), (std::vector<int>{198}));
  // Control tokens are text unless allowed.
  EXPECT_EQ(tok->encode("<|im_start|>user", true)[0], 1);
  EXPECT_NE(tok->encode("<|im_start|>user", false)[0], 1);
  EXPECT_EQ(tok->decode({1, 2}), "<|im_start|><|im_end|>");
  EXPECT_THROW(tok->decode({49152}), Error);
  EXPECT_EQ(tok->piece_to_id("<|im_end|>"), 2);
  EXPECT_EQ(tok->piece_to_id("no such piece"), -1);
}

TEST(BPE, BytesThatAreNotUtf8RoundTrip) {
  TOGA_REQUIRE_FILE(smollm2_path());
  const auto tok = load_tokenizer(smollm2_path());
  // SmolLM2's vocabulary lacks the stand-ins of 21 bytes that never occur in its training text
  // (e.g. 0x04, 0xC0, 0xF5-0xFF); like Hugging Face, toga drops those bytes and keeps all others.
  std::string all, kept;
  int missing = 0;
  for (int b = 0; b < 256; ++b) {
    const std::string one(1, static_cast<char>(b));
    all += one;
    if (tok->piece_to_id(bytes_to_byte_level(one)) >= 0) {
      kept += one;
    } else {
      ++missing;
      EXPECT_TRUE(tok->encode(one).empty()) << b;
    }
  }
  EXPECT_EQ(missing, 21);
  EXPECT_EQ(tok->decode(tok->encode(all)), kept);
  for (const std::string& s : {std::string("\xE4\xBD"), std::string("a\xC3"), std::string("\xE2\x82 x\x80")})
    EXPECT_EQ(tok->decode(tok->encode(s)), s);
}

TEST(BPE, UnknownGgufPreTokenizerIsAnError) {
  TOGA_REQUIRE_FILE(smollm2_path());
  const GGUFFile real(smollm2_path());
  GGUFWriter w;
  w.set_string("general.architecture", "llama");
  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_string("tokenizer.ggml.pre", "some-new-model");
  w.set_string_array("tokenizer.ggml.tokens", real.get_string_array("tokenizer.ggml.tokens"));
  w.set_string_array("tokenizer.ggml.merges", real.get_string_array("tokenizer.ggml.merges"));
  test::ScratchDir dir;
  w.write(dir / "t.gguf");
  try {
    load_tokenizer(dir / "t.gguf");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("some-new-model"), std::string::npos) << e.what();
  }
  GGUFWriter w2;
  w2.set_string("tokenizer.ggml.model", "gpt2");
  w2.set_string_array("tokenizer.ggml.tokens", {"a", "b"});
  w2.set_string_array("tokenizer.ggml.merges", {"a b"});
  w2.write(dir / "nopre.gguf");
  EXPECT_THROW(load_tokenizer(dir / "nopre.gguf"), Error);
}

TEST(BPE, UnrecognisedTokenizerJsonIsAnError) {
  test::ScratchDir dir;
  auto write = [&](const nlohmann::json& j) {
    std::ofstream f(dir / "tokenizer.json");
    f << j.dump();
  };
  nlohmann::json j = {{"model",
                       {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}, {"ab", 2}}}, {"merges", {"a b"}}}},
                      {"pre_tokenizer", {{"type", "Whitespace"}}},
                      {"decoder", {{"type", "ByteLevel"}}}};
  write(j);
  try {
    load_tokenizer(dir.path());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Whitespace"), std::string::npos) << e.what();
  }
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         {{{"type", "Split"},
                           {"pattern", {{"Regex", "\\p{L}+"}}},
                           {"behavior", "Isolated"},
                           {"invert", false}},
                          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  write(j);
  try {
    load_tokenizer(dir.path());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("\\p{L}+"), std::string::npos) << e.what();
  }
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  j["model"]["merges"] = {"a c"};
  write(j);
  EXPECT_THROW(load_tokenizer(dir.path()), Error);  // merge of a token not in the vocabulary
  j["model"]["merges"] = {"a b"};
  write(j);
  EXPECT_EQ(load_tokenizer(dir.path())->encode("ab"), (std::vector<int>{2}));
}

}  // namespace
}  // namespace toga
