// SentencePiece-style tokenizers: toga's score-based implementation (llama2.c tokenizer.bin, GGUF
// 'llama' vocabularies) against libsentencepiece on the Llama-2 tokenizer.bin / tokenizer.model
// pair, llama2.c's own algorithm on stories260K's tok512.bin, the WikiText-2 protocol count, and the
// load_tokenizer dispatch.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <unordered_map>

#include "data/text.h"
#include "io/gguf.h"
#include "../test_util.h"
#include "tokenizer/sentencepiece_model.h"
#include "tokenizer/sentencepiece_tokenizer.h"
#include "tokenizer/spm.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer_test_strings.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace toga {
namespace {

using test::shared_path;

std::string llama2_bin() { return shared_path("data/tokenizers/llama2/tokenizer.bin"); }
std::string llama2_model() { return shared_path("data/tokenizers/llama2/tokenizer.model"); }
std::string ids_str(const std::vector<int>& ids) { return fmt::format("[{}]", fmt::join(ids, ", ")); }

// llama2.c run.c's encode, written out naively (quadratic) as the reference for the heap-based one:
// dummy-prefix " ", code points looked up (else bytes as id byte+3), then repeatedly merge the
// adjacent pair whose concatenation has the highest score, first such pair on ties.
std::vector<int> runc_encode(const SPMTokenizer& t, const std::string& text) {
  std::unordered_map<std::string, int> lookup;
  for (int i = 0; i < t.vocab_size(); ++i) lookup.emplace(t.id_to_piece(i), i);
  std::vector<int> toks;
  if (text.empty()) return toks;
  toks.push_back(lookup.at(" "));
  for (size_t i = 0; i < text.size();) {
    size_t j = i + 1;
    while (j < text.size() && (static_cast<unsigned char>(text[j]) & 0xC0) == 0x80 && j - i < 4) ++j;
    const auto it = lookup.find(text.substr(i, j - i));
    if (it != lookup.end()) {
      toks.push_back(it->second);
    } else {
      for (size_t k = i; k < j; ++k) toks.push_back(static_cast<unsigned char>(text[k]) + 3);
    }
    i = j;
  }
  while (true) {
    float best = -1e10f;
    int best_id = -1;
    size_t best_i = 0;
    for (size_t i = 0; i + 1 < toks.size(); ++i) {
      const auto it = lookup.find(t.id_to_piece(toks[i]) + t.id_to_piece(toks[i + 1]));
      if (it != lookup.end() && t.score(it->second) > best) {
        best = t.score(it->second);
        best_id = it->second;
        best_i = i;
      }
    }
    if (best_id < 0) break;
    toks[best_i] = best_id;
    toks.erase(toks.begin() + static_cast<long>(best_i) + 1);
  }
  return toks;
}

TEST(SPM, Stories260KTokenizerMatchesLlama2cAlgorithm) {
  const auto path = test::stories260k_tokenizer();
  TOGA_REQUIRE_FILE(path);
  const auto tok = SPMTokenizer::from_llama2c(path);
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->bos_id, 1);
  EXPECT_EQ(tok->eos_id, 2);
  EXPECT_TRUE(tok->add_bos);
  EXPECT_TRUE(tok->is_control(1));
  EXPECT_TRUE(tok->is_control(2));
  EXPECT_EQ(tok->id_to_piece(13), "<0x0A>");
  EXPECT_EQ(tok->id_to_piece(1), "<s>");

  std::vector<std::string> strings = {"Once upon a time, there was a little girl named Lily.",
                                      "She loved to play outside in the park.", "", " ", "a", "\n", "Hi!\nBye.",
                                      "\xE4\xBD\xA0\xE5\xA5\xBD", "Tom's dog, Max, ran  fast."};
  for (const auto& l : test::read_lines(shared_path("data/text/tinystories/TinyStories-valid-first-1000.txt"), 600))
    if (!l.empty() && l.size() < 400) strings.push_back(l);
  size_t bad = 0;
  for (const auto& s : strings) {
    const auto got = tok->encode(s);
    const auto want = runc_encode(*tok, s);
    if (got != want && ++bad <= 5) ADD_FAILURE() << "\"" << s << "\"\n  toga  " << ids_str(got) << "\n  run.c " << ids_str(want);
    EXPECT_EQ(tok->decode(got), s);
    EXPECT_EQ(tok->decode(tok->encode_for_model(s)), s);  // the space after BOS is dropped
  }
  EXPECT_EQ(bad, 0u);
  const auto ids = tok->encode_for_model("Once upon a time");
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(tok->decode({1}), "");
}

TEST(SPM, Llama2BinMatchesLibSentencePiece) {
  TOGA_REQUIRE_FILE(llama2_bin());
  TOGA_REQUIRE_FILE(llama2_model());
  const auto mine = SPMTokenizer::from_llama2c(llama2_bin());
  const SentencePieceTokenizer ref(llama2_model());
  ASSERT_EQ(mine->vocab_size(), 32000);
  ASSERT_EQ(ref.vocab_size(), 32000);
  EXPECT_EQ(mine->bos_id, ref.bos_id);
  EXPECT_EQ(mine->eos_id, ref.eos_id);
  EXPECT_EQ(mine->unk_id, ref.unk_id);
  for (int id = 0; id < 32000; ++id) {
    ASSERT_EQ(mine->score(id), ref.score(id)) << id;
    ASSERT_EQ(mine->is_control(id), ref.is_control(id)) << id;
  }
  EXPECT_EQ(mine->encode("Hello world"), (std::vector<int>{15043, 3186}));
  EXPECT_EQ(mine->encode_for_model("Hello world"), (std::vector<int>{1, 15043, 3186}));

  test::TestStringOptions opt;
  opt.control_tokens = {"<s>", "</s>"};
  const auto strings = test::tokenizer_test_strings(opt);
  ASSERT_GE(strings.size(), 2000u);
  size_t bad = 0, bad_decode = 0, bad_round_trip = 0;
  for (const auto& s : strings) {
    for (bool special : {false, true}) {
      const auto got = mine->encode(s, special);
      const auto want = ref.encode(s, special);
      if (got != want && ++bad <= 5)
        ADD_FAILURE() << "\"" << s << "\" special=" << special << "\n  toga " << ids_str(got) << "\n  spm  "
                      << ids_str(want);
      if (mine->decode(want) != ref.decode(want) && ++bad_decode <= 5)
        ADD_FAILURE() << "decode " << ids_str(want) << ": toga \"" << mine->decode(want) << "\" spm \""
                      << ref.decode(want) << "\"";
    }
    // U+2581 is SentencePiece's space marker, so only text without it comes back unchanged.
    if (s.find("\xE2\x96\x81") == std::string::npos && mine->decode(mine->encode(s)) != s && ++bad_round_trip <= 5)
      ADD_FAILURE() << "round trip failed for \"" << s << "\"";
  }
  EXPECT_EQ(bad, 0u) << "of " << strings.size() << " strings x 2 modes";
  EXPECT_EQ(bad_decode, 0u);
  EXPECT_EQ(bad_round_trip, 0u);

  // Decoding around control tokens, as SentencePiece does it.
  const int hello = 15043;
  for (const std::vector<int>& ids : std::vector<std::vector<int>>{
           {1, hello}, {hello, 1, hello}, {1, 2, hello}, {hello, 2, hello}, {29871, hello}, {1, 29871, 13, hello}, {}})
    EXPECT_EQ(mine->decode(ids), ref.decode(ids)) << ids_str(ids);
}

TEST(SPM, WikiText2ProtocolCountLlama2) {
  TOGA_REQUIRE_FILE(llama2_bin());
  TOGA_REQUIRE_FILE(llama2_model());
  const auto wiki = shared_path("data/text/wikitext-2-raw/wiki.test.raw");
  TOGA_REQUIRE_FILE(wiki);
  const std::string text = gptq_wikitext_text(wiki);
  const auto mine = SPMTokenizer::from_llama2c(llama2_bin());
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = mine->encode_for_model(text);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ info ] Llama-2 WikiText-2 test (toga SPM): %zu tokens incl. BOS in %.3f s (%.0f tokens/s)\n",
              ids.size(), s, ids.size() / s);
  EXPECT_EQ(ids.size(), 341469u);  // 341,468 + BOS, the figure the literature reports
  EXPECT_EQ(ids[0], 1);
  EXPECT_LT(s, 5.0);
  const SentencePieceTokenizer ref(llama2_model());
  const auto t1 = std::chrono::steady_clock::now();
  const auto ref_ids = ref.encode_for_model(text);
  const double s1 = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  std::printf("[ info ] Llama-2 WikiText-2 test (libsentencepiece): %zu tokens in %.3f s\n", ref_ids.size(), s1);
  EXPECT_EQ(ref_ids, ids);
  EXPECT_TRUE(mine->decode(ids) == text);
  const auto fast = load_tokenizer("", llama2_model());
  const auto t2 = std::chrono::steady_clock::now();
  EXPECT_EQ(fast->encode_for_model(text), ids);
  std::printf("[ info ] Llama-2 WikiText-2 test (load_tokenizer on tokenizer.model): %.3f s\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t2).count());

  // A wrong way the protocol warns about: the raw file as it is.
  EXPECT_EQ(mine->encode_for_model(read_text(wiki)).size(), 335688u);
}

// A GGUF 'llama' vocabulary built from the Llama-2 model: pieces with U+2581, scores, token types.
TEST(SPM, GgufLlamaVocabularyMatchesLibSentencePiece) {
  TOGA_REQUIRE_FILE(llama2_model());
  const SentencePieceTokenizer ref(llama2_model());
  std::vector<std::string> pieces;
  std::vector<GGUFValue> scores, types;
  for (int id = 0; id < ref.vocab_size(); ++id) {
    pieces.push_back(ref.id_to_piece(id));
    scores.push_back(GGUFValue::make_float(GGUFType::FLOAT32, ref.score(id)));
    const int t = ref.is_control(id) ? 3 : ref.is_unknown(id) ? 2 : ref.is_byte(id) ? 6 : ref.is_unused(id) ? 5 : 1;
    types.push_back(GGUFValue::make_int(GGUFType::INT32, t));
  }
  GGUFWriter w;
  w.set_string("general.architecture", "llama");
  w.set_string("tokenizer.ggml.model", "llama");
  w.set_string_array("tokenizer.ggml.tokens", pieces);
  w.set("tokenizer.ggml.scores", GGUFValue::make_array(GGUFType::FLOAT32, scores));
  w.set("tokenizer.ggml.token_type", GGUFValue::make_array(GGUFType::INT32, types));
  w.set_uint32("tokenizer.ggml.bos_token_id", 1);
  w.set_uint32("tokenizer.ggml.eos_token_id", 2);
  w.set_uint32("tokenizer.ggml.unknown_token_id", 0);
  test::ScratchDir dir;
  w.write(dir / "llama2-vocab.gguf");

  const auto tok = load_tokenizer(dir / "llama2-vocab.gguf");
  EXPECT_STREQ(tok->kind(), "spm");
  EXPECT_TRUE(tok->add_bos);
  EXPECT_EQ(tok->bos_id, 1);
  EXPECT_EQ(tok->id_to_piece(15043), "\xE2\x96\x81Hello");
  EXPECT_EQ(tok->piece_to_id("\xE2\x96\x81Hello"), 15043);
  test::TestStringOptions opt;
  opt.control_tokens = {"<s>", "</s>"};
  size_t bad = 0;
  const auto strings = test::tokenizer_test_strings(opt);
  for (const auto& s : strings)
    for (bool special : {false, true})
      if (tok->encode(s, special) != ref.encode(s, special)) ++bad;
  EXPECT_EQ(bad, 0u) << "of " << strings.size() << " strings x 2 modes";
}

TEST(SentencePieceModel, ReadsLlama2ModelAndUsesTogasEncoder) {
  TOGA_REQUIRE_FILE(llama2_model());
  const auto info = read_sentencepiece_model(llama2_model());
  EXPECT_EQ(info.config.pieces.size(), 32000u);
  EXPECT_EQ(info.model_type, 2);
  EXPECT_EQ(info.normalizer_name, "identity");
  EXPECT_TRUE(info.config.add_dummy_prefix);
  EXPECT_FALSE(info.remove_extra_whitespaces);
  EXPECT_TRUE(info.byte_fallback);
  EXPECT_EQ(info.unk_id, 0);
  EXPECT_EQ(info.bos_id, 1);
  EXPECT_EQ(info.eos_id, 2);
  EXPECT_EQ(info.pad_id, -1);
  EXPECT_EQ(spm_incompatibility(info), "");
  SentencePieceModelInfo unigram = info;
  unigram.model_type = 1;
  EXPECT_NE(spm_incompatibility(unigram), "");

  const auto tok = load_tokenizer("", llama2_model());
  const SentencePieceTokenizer ref(llama2_model());
  EXPECT_STREQ(tok->kind(), "spm");
  EXPECT_EQ(tok->bos_id, 1);
  EXPECT_EQ(tok->eos_id, 2);
  EXPECT_EQ(tok->unk_id, 0);
  EXPECT_EQ(tok->pad_id, -1);
  EXPECT_TRUE(tok->add_bos);
  test::TestStringOptions opt;
  opt.control_tokens = {"<s>", "</s>"};
  size_t bad = 0;
  const auto strings = test::tokenizer_test_strings(opt);
  for (const auto& s : strings)
    for (bool special : {false, true})
      if (tok->encode(s, special) != ref.encode(s, special)) ++bad;
  EXPECT_EQ(bad, 0u) << "of " << strings.size() << " strings x 2 modes";
}

// llama2.c vocabularies written as tokenizer.model load in libsentencepiece and encode the same.
TEST(SentencePieceModel, WrittenModelsLoadInLibSentencePiece) {
  TOGA_REQUIRE_FILE(test::stories260k_tokenizer());
  TOGA_REQUIRE_FILE(llama2_bin());
  test::ScratchDir dir;
  for (const auto& bin : {test::stories260k_tokenizer(), llama2_bin()}) {
    const auto mine = SPMTokenizer::from_llama2c(bin);
    write_sentencepiece_model(*mine, dir / "tokenizer.model");
    const SentencePieceTokenizer ref(dir / "tokenizer.model");
    EXPECT_EQ(ref.vocab_size(), mine->vocab_size());
    EXPECT_EQ(ref.bos_id, 1);
    EXPECT_EQ(ref.eos_id, 2);
    EXPECT_EQ(ref.unk_id, 0);
    test::TestStringOptions opt;
    opt.control_tokens = {"<s>", "</s>"};
    opt.include_u2581 = false;
    size_t bad = 0, n = 0;
    for (const auto& s : test::tokenizer_test_strings(opt)) {
      ++n;
      if (ref.encode(s, true) != mine->encode(s, true) && ++bad <= 3)
        ADD_FAILURE() << bin << ": \"" << s << "\"\n  toga " << ids_str(mine->encode(s, true)) << "\n  spm  "
                      << ids_str(ref.encode(s, true));
    }
    EXPECT_EQ(bad, 0u) << bin << ": of " << n;
    // And toga reads its own file back to the same vocabulary.
    const auto back = load_tokenizer("", dir / "tokenizer.model");
    for (int id = 0; id < mine->vocab_size(); id += 7) EXPECT_EQ(back->decode({id}), mine->decode({id})) << id;
  }
}

TEST(SPM, MalformedTokenizerBinIsAnError) {
  test::ScratchDir dir;
  auto write = [&](const std::string& bytes) {
    std::ofstream f(dir / "tok.bin", std::ios::binary);
    f << bytes;
  };
  write("");
  EXPECT_THROW(SPMTokenizer::from_llama2c(dir / "tok.bin"), Error);
  std::string b(4, '\0');
  b[0] = 8;  // max_token_len 8, then a token claiming 100 bytes
  b += std::string("\0\0\0\0", 4) + std::string("\x64\0\0\0", 4) + "abc";
  write(b);
  EXPECT_THROW(SPMTokenizer::from_llama2c(dir / "tok.bin"), Error);
}

TEST(LoadTokenizer, Dispatch) {
  TOGA_REQUIRE_FILE(test::stories260k_path());
  TOGA_REQUIRE_FILE(llama2_model());
  // llama2.c checkpoint: tok<vocab>.bin beside it.
  const auto t = load_tokenizer(test::stories260k_path());
  EXPECT_STREQ(t->kind(), "spm");
  EXPECT_EQ(t->vocab_size(), 512);
  // An explicit tokenizer whose vocabulary does not fit the model.
  try {
    load_tokenizer(test::stories260k_path(), llama2_bin());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("32000"), std::string::npos) << e.what();
  }
  EXPECT_EQ(load_tokenizer(test::stories260k_path(), test::stories260k_tokenizer())->vocab_size(), 512);
  // Tokenizer path on its own.
  EXPECT_STREQ(load_tokenizer("", llama2_model())->kind(), "spm");  // identity-normalized BPE: toga's own
  EXPECT_STREQ(load_tokenizer("", llama2_bin())->kind(), "spm");

  test::ScratchDir dir;
  // An HF directory with only tokenizer.model, and a tokenizer_config.json that turns BOS off.
  fs::create_directories(dir / "hf");
  fs::copy_file(llama2_model(), dir / "hf/tokenizer.model");
  {
    auto tok = load_tokenizer(dir / "hf");
    EXPECT_STREQ(tok->kind(), "spm");
    EXPECT_TRUE(tok->add_bos);
    EXPECT_EQ(tok->encode_for_model("Hello world"), (std::vector<int>{1, 15043, 3186}));
  }
  {
    std::ofstream f(dir / "hf/tokenizer_config.json");
    f << R"({"add_bos_token": false, "add_eos_token": true, "bos_token": "<s>", "eos_token": {"content": "</s>"},
            "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"})";
  }
  {
    auto tok = load_tokenizer(dir / "hf");
    EXPECT_FALSE(tok->add_bos);
    EXPECT_TRUE(tok->add_eos);
    EXPECT_EQ(tok->encode_for_model("Hello world"), (std::vector<int>{15043, 3186, 2}));
    EXPECT_FALSE(tok->chat_template.empty());
  }
  // A SentencePiece-style tokenizer.json is read through the tokenizer.model beside it.
  {
    std::ofstream f(dir / "hf/tokenizer.json");
    f << R"({"model": {"type": "BPE", "byte_fallback": true, "vocab": {}, "merges": []},
            "pre_tokenizer": null, "decoder": {"type": "Sequence", "decoders": []}})";
  }
  EXPECT_STREQ(load_tokenizer(dir / "hf")->kind(), "spm");
  // Nothing to find.
  fs::create_directories(dir / "empty");
  try {
    load_tokenizer(dir / "empty");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos) << e.what();
  }
  fs::copy_file(test::stories260k_path(), dir / "empty/model.bin");
  try {
    load_tokenizer(dir / "empty/model.bin");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tok512.bin"), std::string::npos) << e.what();
  }
  EXPECT_THROW(load_tokenizer(dir / "missing.gguf"), Error);
}

}  // namespace
}  // namespace toga
