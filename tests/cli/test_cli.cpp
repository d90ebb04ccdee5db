// The toga binary end to end: bad input is a clear one-line error naming the file (exit code 1, no
// crash), failed runs leave no half-written output, and GGUF conversion keeps logits identical.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <cmath>
#include <random>

#include "io/checkpoint.h"
#include "model/model.h"
#include "model/reference_llama.h"
#include "cli/cli_util.h"
#include "test_util.h"
#include "tokenizer/bpe.h"
#include "tokenizer/hf_json.h"
#include "tokenizer/tokenizer.h"
#include "util/atomic_file.h"

using namespace toga;
using namespace toga::test;
namespace fs = std::filesystem;

namespace {

// A tiny random Llama with a byte-level tokenizer (the 256 bytes, then <s> and </s>) as an HF
// directory, so that whole pipelines run without ../shared.
void write_tiny_model(const std::string& dir) {
  ModelConfig c = tiny_config(Family::Llama);
  c.hidden_size = 64;
  c.intermediate_size = 160;
  c.head_dim = 16;
  c.vocab_size = 258;
  c.max_position_embeddings = 128;
  c.bos_token_id = 256;
  c.eos_token_ids = {257};
  const auto w = random_weights(c, 7);
  std::vector<TensorToWrite> tensors;
  for (const auto& [name, t] : w.t) tensors.push_back({name, DType::F32, t.first, t.second.data()});
  BPEConfig bc;
  for (int b = 0; b < 256; ++b) bc.tokens.push_back(bytes_to_byte_level(std::string(1, static_cast<char>(b))));
  bc.tokens.insert(bc.tokens.end(), {"<s>", "</s>"});
  bc.types.assign(256, TokenType::Normal);
  bc.types.insert(bc.types.end(), {TokenType::Control, TokenType::Control});
  bc.added = {{256, "<s>"}, {257, "</s>"}};
  BPETokenizer tok(bc, dir);
  tok.bos_id = 256;
  tok.eos_id = 257;
  tok.add_bos = true;
  HFWriteOptions o;
  o.extra_files = hf_tokenizer_files(tok);
  write_hf_checkpoint(dir, c, tensors, o);
}

// Deterministic English-like text (about `chars` bytes) for calibration and evaluation.
std::string tiny_text(size_t chars) {
  const std::vector<std::string> subjects = {"The cat", "A little girl", "Tom", "The old dog", "My friend", "The bird"};
  const std::vector<std::string> verbs = {"saw", "liked", "found", "wanted", "played with", "ran to"};
  const std::vector<std::string> objects = {"a red ball", "the big tree", "her mother", "some cake", "the park",
                                            "a small boat"};
  std::mt19937 rng(3);
  std::string text;
  while (text.size() < chars) {
    text += subjects[rng() % subjects.size()] + " " + verbs[rng() % verbs.size()] + " " +
            objects[rng() % objects.size()] + (rng() % 4 ? ". " : ".\n");
  }
  return text;
}

// The dtype of each tensor in a safetensors file, from its JSON header.
std::map<std::string, std::string> safetensors_dtypes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  uint64_t n = 0;
  f.read(reinterpret_cast<char*>(&n), 8);
  std::string header(n, '\0');
  f.read(header.data(), static_cast<std::streamsize>(n));
  const auto j = nlohmann::json::parse(header);
  std::map<std::string, std::string> out;
  for (const auto& [name, e] : j.items())
    if (name != "__metadata__") out[name] = e["dtype"];
  return out;
}

int lines(const std::string& s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')); }

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST(Cli, BadInputsAreOneLineErrorsNamingTheFile) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  // A valid HF directory to corrupt in several ways.
  const std::string good = dir / "good";
  ASSERT_EQ(run_toga("convert " + stories260k_path() + " " + good).code, 0);

  auto expect_error = [&](const std::string& args, const std::string& path, const std::string& problem) {
    const auto r = run_toga(args);
    EXPECT_EQ(r.code, 1) << args << "\n" << r.output;
    EXPECT_NE(r.output.find("error: "), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(path), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(problem), std::string::npos) << r.output;
  };

  const std::string truncated = dir / "truncated";
  fs::copy(good, truncated);
  fs::resize_file(truncated + "/model.safetensors", fs::file_size(truncated + "/model.safetensors") / 2);
  expect_error("eval ppl " + truncated, truncated + "/model.safetensors", "");

  const std::string arch = dir / "arch";
  fs::copy(good, arch);
  auto cfg = nlohmann::json::parse(read_text_file(arch + "/config.json"));
  cfg["architectures"] = {"GPT2LMHeadModel"};
  write_text_atomically(arch + "/config.json", cfg.dump());
  expect_error("generate " + arch, arch + "/config.json", "unsupported architecture 'GPT2LMHeadModel'");

  const std::string shape = dir / "shape";
  fs::copy(good, shape);
  cfg = nlohmann::json::parse(read_text_file(shape + "/config.json"));
  cfg["intermediate_size"] = 100;
  write_text_atomically(shape + "/config.json", cfg.dump());
  expect_error("eval ppl " + shape, "model.safetensors", "the config requires");

  const std::string gguf = dir / "bad.gguf";
  write_text_atomically(gguf, "GGUF\x07\x00\x00\x00 not really a model");
  expect_error("info " + gguf, gguf, "version");

  expect_error("eval ppl " + dir / "missing", dir / "missing", "no such file");
  expect_error("eval ppl " + stories260k_path() + " --dataset " + dir / "nope.txt", dir / "nope.txt", "");
}

TEST(Cli, FailedConversionLeavesNoOutput) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  const std::string good = dir / "good";
  ASSERT_EQ(run_toga("convert " + stories260k_path() + " " + good).code, 0);
  // A NaN in a weight: the error names the tensor, and neither the output nor a temporary remains.
  const std::string nan = dir / "nan";
  fs::copy(good, nan);
  {
    std::fstream f(nan + "/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    uint64_t header = 0;
    f.read(reinterpret_cast<char*>(&header), 8);
    const float bad = std::nanf("");
    f.seekp(static_cast<std::streamoff>(8 + header + 4 * 100));  // inside the first tensor
    f.write(reinterpret_cast<const char*>(&bad), 4);
  }
  const std::string out = dir / "out";
  const auto r = run_toga("convert " + nan + " " + out);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("non-finite"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out));
  for (const auto& e : fs::directory_iterator(dir.path()))
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
}

TEST(Cli, ConvertedSmolLM2GivesIdenticalLogitsAndTokens) {
  TOGA_REQUIRE_FILE(smollm2_path());
  ScratchDir dir;
  const std::string out = dir / "smollm2-hf";
  const auto r = run_toga("convert " + smollm2_path() + " " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                        "generation_config.json"})
    EXPECT_TRUE(fs::exists(out + "/" + f)) << f;
  const auto tc = nlohmann::json::parse(read_text_file(out + "/tokenizer_config.json"));
  EXPECT_NE(tc.value("chat_template", "").find("<|im_start|>"), std::string::npos);

  const Model a = load_model(open_checkpoint(smollm2_path()));
  const Model b = load_model(open_checkpoint(out));
  const auto ta = load_tokenizer(smollm2_path()), tb = load_tokenizer(out);
  const std::string text = "The capital of France is Paris. In 1889, 12 engineers built the tower.";
  const auto ids = ta->encode(text);
  EXPECT_EQ(ids, tb->encode(text));
  std::vector<int64_t> ids64(ids.begin(), ids.end());
  torch::NoGradGuard ng;
  const auto x = torch::tensor(ids64).unsqueeze(0);
  EXPECT_TRUE(torch::equal(a.forward(x), b.forward(x)));
}

TEST(Cli, EvalTasksOnAUserFileWritesJsonComparesAndRejectsBadLines) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  const std::string task = dir / "mine.jsonl";
  write_text_atomically(task,
                        "{\"context\": \"Once upon a time, there was a little\", \"choices\": [\"girl\", \"xylophone\"], "
                        "\"label\": 0}\n"
                        "{\"context\": \"Lily went to the\", \"choices\": [\"park\", \"quantum\", \"zzz\"], \"label\": 1}\n");
  const std::string a = dir / "a.json", b = dir / "b.json";
  auto r = run_toga("eval tasks " + stories260k_path() + " --tasks file:" + task + " --json " + a);
  ASSERT_EQ(r.code, 0) << r.output;
  const auto j = nlohmann::json::parse(read_text_file(a));
  ASSERT_EQ(j["tasks"].size(), 1u) << j.dump();
  const auto& t = j["tasks"].begin().value();
  EXPECT_EQ(t["n"], 2);
  EXPECT_TRUE(t.contains("acc_norm"));
  // Two items: each accuracy is 0, 0.5 or 1, and the average is that of the one task.
  const double acc = t["acc"].get<double>();
  EXPECT_TRUE(acc == 0.0 || acc == 0.5 || acc == 1.0) << acc;
  EXPECT_DOUBLE_EQ(j["average"]["value"].get<double>(), t["headline"].get<double>());

  ASSERT_EQ(run_toga("eval tasks " + stories260k_path() + " --tasks file:" + task + " --limit 1 --json " + b).code, 0);
  r = run_toga("eval tasks --compare " + a + " " + b);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("average of 1 common task"), std::string::npos) << r.output;

  const std::string bad = dir / "bad.jsonl";
  write_text_atomically(bad, "{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"label\": 0}\n"
                             "{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"label\": 5}\n");
  const std::string never = dir / "never.json";
  r = run_toga("eval tasks " + stories260k_path() + " --tasks file:" + bad + " --json " + never);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find(bad), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("line 2"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(never));
}

TEST(Cli, KldWithKvBitsMeasuresTheModelAgainstTheUnquantizedBase) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  const std::string j1 = dir / "self.json", j4 = dir / "kv4.json", jb = dir / "both.json";
  const std::string m = stories260k_path(), w = " --seqlen 256 --max-windows 2 --json ";
  ASSERT_EQ(run_toga("eval kld " + m + " --base " + m + w + j1).code, 0);
  ASSERT_EQ(run_toga("eval kld " + m + " --base " + m + " --kv-bits 4" + w + j4).code, 0);
  ASSERT_EQ(run_toga("eval kld " + m + " --base " + m + " --kv-bits 4 --base-kv-bits 4" + w + jb).code, 0);
  const auto kld = [](const std::string& p) {
    return nlohmann::json::parse(read_text_file(p))["result"]["mean_kld"].get<double>();
  };
  EXPECT_EQ(kld(j1), 0.0);
  EXPECT_GT(kld(j4), 1e-3);  // KV4 changes the distribution; the base must not share it
  EXPECT_EQ(kld(jb), 0.0);
}

// Both verbs that write a directory, with the arguments that make them fast on the tiny model.
struct DirVerb {
  std::string name, args;
};
std::vector<DirVerb> dir_verbs(const std::string& model) {
  return {{"convert", "convert " + model + " "}, {"quantize", "quantize " + model + " --method rtn --wbits 8 "}};
}

TEST(CliOutputs, DirectoryVerbsNeverReplaceWhatTogaDidNotMake) {
  ScratchDir dir;
  const std::string model = dir / "tiny";
  write_tiny_model(model);
  for (const auto& v : dir_verbs(model)) {
    SCOPED_TRACE(v.name);
    for (const std::string force : {"", " --force"}) {
      SCOPED_TRACE(force);
      // A user's directory: refused, the user's file survives and nothing is written into it.
      const std::string user = dir / (v.name + ".user");
      fs::create_directories(user);
      write_text_atomically(user + "/notes.txt", "mine");
      auto r = run_toga(v.args + user + force);
      EXPECT_EQ(r.code, 1) << r.output;
      EXPECT_EQ(lines(r.output), 1) << r.output;
      EXPECT_TRUE(contains(r.output, "error: " + user + ": ") && contains(r.output, "did not make")) << r.output;
      EXPECT_EQ(read_text_file(user + "/notes.txt"), "mine");
      EXPECT_FALSE(fs::exists(user + "/config.json"));

      // A file: never replaced by a directory.
      const std::string file = dir / (v.name + ".file");
      write_text_atomically(file, "a file");
      r = run_toga(v.args + file + force);
      EXPECT_EQ(r.code, 1) << r.output;
      EXPECT_EQ(lines(r.output), 1) << r.output;
      EXPECT_TRUE(contains(r.output, "error: " + file + ": ") && contains(r.output, "not a directory")) << r.output;
      EXPECT_EQ(read_text_file(file), "a file");

      // toga's own output that a user put a file into: even --force leaves it.
      const std::string mixed = dir / (v.name + ".mixed");
      if (!fs::exists(mixed)) ASSERT_EQ(run_toga(v.args + mixed).code, 0);
      write_text_atomically(mixed + "/notes.txt", "mine");
      r = run_toga(v.args + mixed + force);
      EXPECT_EQ(r.code, 1) << r.output;
      EXPECT_TRUE(contains(r.output, mixed) && contains(r.output, "notes.txt")) << r.output;
      EXPECT_EQ(read_text_file(mixed + "/notes.txt"), "mine");
      EXPECT_TRUE(fs::exists(mixed + "/config.json"));
    }
    // An empty directory: only with --force.
    const std::string empty = dir / (v.name + ".empty");
    fs::create_directories(empty);
    auto r = run_toga(v.args + empty);
    EXPECT_EQ(r.code, 1) << r.output;
    EXPECT_TRUE(contains(r.output, empty) && contains(r.output, "--force")) << r.output;
    EXPECT_TRUE(fs::is_empty(empty));
    r = run_toga(v.args + empty + " --force");
    EXPECT_EQ(r.code, 0) << r.output;
    EXPECT_TRUE(fs::exists(empty + "/config.json"));
  }
  for (const auto& e : fs::directory_iterator(dir.path()))
    EXPECT_FALSE(contains(e.path().filename().string(), ".tmp.")) << e.path();
}

TEST(CliOutputs, DirectoryVerbsReplaceTheirOwnOutputOnlyWithForce) {
  ScratchDir dir;
  const std::string model = dir / "tiny";
  write_tiny_model(model);
  for (const auto& v : dir_verbs(model)) {
    SCOPED_TRACE(v.name);
    const std::string out = dir / (v.name + ".out");
    const std::string bf16 = v.name == "convert" ? " --dtype bf16" : " --save-dtype bf16";
    auto r = run_toga(v.args + out);  // a fresh path
    ASSERT_EQ(r.code, 0) << r.output;
    const auto marker = nlohmann::json::parse(read_text_file(out + "/" + kOutputMarker));
    EXPECT_EQ(marker["tool"], "toga");
    EXPECT_EQ(marker["verb"], v.name);
    EXPECT_EQ(marker["version"], TOGA_VERSION);
    EXPECT_TRUE(marker["files"].is_array() && !marker["files"].empty()) << marker.dump();
    const auto torch_dtype = [&] {
      return nlohmann::json::parse(read_text_file(out + "/config.json"))["torch_dtype"].get<std::string>();
    };
    EXPECT_EQ(torch_dtype(), "float32");

    r = run_toga(v.args + out + bf16);
    EXPECT_EQ(r.code, 1) << r.output;
    EXPECT_EQ(lines(r.output), 1) << r.output;
    EXPECT_TRUE(contains(r.output, "error: " + out + ": ") && contains(r.output, "--force")) << r.output;
    EXPECT_EQ(torch_dtype(), "float32");

    r = run_toga(v.args + out + bf16 + " --force");
    EXPECT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(torch_dtype(), "bfloat16");
    EXPECT_EQ(run_toga("info " + out).code, 0);
  }
  for (const auto& e : fs::directory_iterator(dir.path()))
    EXPECT_FALSE(contains(e.path().filename().string(), ".tmp.") || contains(e.path().filename().string(), ".old."))
        << e.path();
}

TEST(CliOutputs, FileOutputsAreNewOrReplaceAFileWithForce) {
  ScratchDir dir;
  const std::string model = dir / "tiny";
  write_tiny_model(model);
  const std::string text = dir / "text.txt";
  write_text_atomically(text, tiny_text(2000));
  const std::string existing = dir / "existing.json";
  write_text_atomically(existing, "mine");
  const std::string window = " --dataset " + text + " --seqlen 64 ";
  // Every verb that writes a file: refused before any work, the file intact, the message names it.
  for (const std::string args :
       {"eval ppl " + model + window + "--json " + existing, "eval kld " + model + " --base " + model + window +
        "--json " + existing, "eval tasks " + model + " --tasks file:" + dir / "none.jsonl" + " --json " + existing,
        "eval tasks " + model + " --tasks file:" + dir / "none.jsonl" + " --dump-items " + existing,
        "eval logits " + model + " --text hello --out " + dir / "existing",
        "quantize " + model + " " + dir / "q" + " --method rtn --report " + existing}) {
    SCOPED_TRACE(args);
    const auto r = run_toga(args);
    EXPECT_EQ(r.code, 1) << r.output;
    EXPECT_EQ(lines(r.output), 1) << r.output;
    EXPECT_TRUE(contains(r.output, "error: " + existing + ": ") && contains(r.output, "--force")) << r.output;
    EXPECT_EQ(read_text_file(existing), "mine");
  }
  EXPECT_FALSE(fs::exists(dir / "q"));  // quantize refused before it quantized

  // --force replaces a file ...
  auto r = run_toga("eval ppl " + model + window + "--json " + existing + " --force");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(nlohmann::json::parse(read_text_file(existing))["metric"], "perplexity");
  r = run_toga("eval logits " + model + " --text hello --out " + dir / "existing" + " --force");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(fs::file_size(dir / "existing.f32"), 6u * 258u * 4u);  // BOS + 5 bytes, 258 logits each
  // ... but never a directory.
  const std::string d = dir / "d.json";
  fs::create_directories(d);
  write_text_atomically(d + "/notes.txt", "mine");
  r = run_toga("eval ppl " + model + window + "--json " + d + " --force");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_TRUE(contains(r.output, "error: " + d + ": ") && contains(r.output, "directory")) << r.output;
  EXPECT_EQ(read_text_file(d + "/notes.txt"), "mine");
}

TEST(Cli, QuantizeSaveDtypeIsCheckedAndHonoured) {
  ScratchDir dir;
  const std::string model = dir / "tiny";
  write_tiny_model(model);
  write_text_atomically(dir / "text.txt", tiny_text(500));
  auto r = run_toga("quantize " + model + " " + dir / "bogus" + " --method rtn --save-dtype bogus");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_TRUE(contains(r.output, "error: ") && contains(r.output, "--save-dtype") && contains(r.output, "'bogus'"))
      << r.output;
  EXPECT_FALSE(fs::exists(dir / "bogus"));

  // The tensors toga does not quantize (embeddings, norms, lm_head) are stored in the dtype asked for,
  // under every spelling; the packed codes are not.
  for (const auto& [flag, dtype, torch_dtype] :
       std::vector<std::tuple<std::string, std::string, std::string>>{{"bfloat16", "BF16", "bfloat16"},
                                                                      {"bf16", "BF16", "bfloat16"},
                                                                      {"float16", "F16", "float16"},
                                                                      {"fp16", "F16", "float16"},
                                                                      {"float32", "F32", "float32"},
                                                                      {"fp32", "F32", "float32"}}) {
    SCOPED_TRACE(flag);
    const std::string out = dir / flag;
    r = run_toga("quantize " + model + " " + out + " --method rtn --wbits 4 --save-dtype " + flag);
    ASSERT_EQ(r.code, 0) << r.output;
    const auto dtypes = safetensors_dtypes(out + "/model.safetensors");
    for (const char* t : {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
                          "model.layers.0.input_layernorm.weight", "model.layers.1.post_attention_layernorm.weight"}) {
      ASSERT_TRUE(dtypes.count(t)) << t;
      EXPECT_EQ(dtypes.at(t), dtype) << t;
    }
    EXPECT_FALSE(dtypes.count("model.layers.0.self_attn.q_proj.weight"));  // stored as codes and fp16 scales
    EXPECT_EQ(dtypes.at("model.layers.0.self_attn.q_proj.weight_packed"), "U8");
    EXPECT_EQ(dtypes.at("model.layers.0.self_attn.q_proj.weight_scale"), "F16");
    EXPECT_EQ(nlohmann::json::parse(read_text_file(out + "/config.json"))["torch_dtype"], torch_dtype);
    r = run_toga("eval ppl " + out + " --dataset " + dir / "text.txt" + " --seqlen 32 --max-windows 1");
    EXPECT_EQ(r.code, 0) << r.output;  // the checkpoint loads
  }
}

// The whole quantization pipeline on a tiny random model, its tokenizer and a text file: RTN, GPTQ
// and Atom checkpoints that load, with sensible perplexity and KL divergence. No shared data.
TEST(Cli, QuantizationPipelineOnATinySyntheticModel) {
  ScratchDir dir;
  const std::string model = dir / "tiny", text = dir / "text.txt";
  write_tiny_model(model);
  write_text_atomically(text, tiny_text(12000));
  const std::string calib = " --calib-data " + text + " --calib 16 --calib-seqlen 64";
  const std::string window = " --dataset " + text + " --seqlen 64";
  struct Run {
    std::string name, flags;
  };
  const std::vector<Run> runs = {{"rtn_w4", "--method rtn --wbits 4"},
                                 {"rtn_w8", "--method rtn --wbits 8"},
                                 {"gptq_w4", "--method gptq --wbits 4" + calib},
                                 {"gptq_w8", "--method gptq --wbits 8" + calib},
                                 {"atom_w4a4", "--method atom --wbits 4 --abits 4" + calib}};
  auto ppl = [&](const std::string& m) {
    const std::string json = dir / (fs::path(m).filename().string() + ".ppl.json");
    // The same forward as `eval kld` (both default to the runtime), so its model_ppl equals this to
    // 1e-6: each position's logits do not depend on how a window is chunked.
    const auto r = run_toga("eval ppl " + m + window + " --json " + json);
    EXPECT_EQ(r.code, 0) << r.output;
    return r.code ? NAN : nlohmann::json::parse(read_text_file(json))["result"]["ppl"].get<double>();
  };
  const double base_ppl = ppl(model);
  EXPECT_TRUE(std::isfinite(base_ppl) && base_ppl > 1.0) << base_ppl;

  std::map<std::string, nlohmann::json> kld;
  for (const auto& run : runs) {
    SCOPED_TRACE(run.name);
    const std::string out = dir / run.name, report = dir / (run.name + ".quantize.json");
    auto r = run_toga("quantize " + model + " " + out + " " + run.flags + " --report " + report);
    ASSERT_EQ(r.code, 0) << r.output;
    const auto rep = nlohmann::json::parse(read_text_file(report));
    EXPECT_EQ(rep["layers"].size(), 2u * 7u);
    EXPECT_GT(rep["weight_bits_total"].get<double>(), rep["weight_bits_codes"].get<double>());
    const auto cfg = nlohmann::json::parse(read_text_file(out + "/config.json"));
    ASSERT_TRUE(cfg.contains("quantization_config"));
    EXPECT_EQ(cfg["quantization_config"]["quant_method"], "toga");
    EXPECT_TRUE(fs::exists(out + "/tokenizer.json"));
    EXPECT_EQ(run_toga("info " + out).code, 0);

    const double q_ppl = ppl(out);
    EXPECT_TRUE(std::isfinite(q_ppl) && q_ppl > 1.0) << q_ppl;
    const std::string json = dir / (run.name + ".kld.json");
    r = run_toga("eval kld " + out + " --base " + model + window + " --json " + json);
    ASSERT_EQ(r.code, 0) << r.output;
    kld[run.name] = nlohmann::json::parse(read_text_file(json))["result"];
    const double mean = kld[run.name]["mean_kld"].get<double>();
    EXPECT_TRUE(std::isfinite(mean) && mean >= 0.0) << mean;
    EXPECT_GE(kld[run.name]["median_kld"].get<double>(), 0.0);
    EXPECT_NEAR(kld[run.name]["base_ppl"].get<double>(), base_ppl, 1e-6 * base_ppl);
    EXPECT_NEAR(kld[run.name]["model_ppl"].get<double>(), q_ppl, 1e-6 * q_ppl);
  }
  const auto mean = [&](const std::string& n) { return kld[n]["mean_kld"].get<double>(); };
  // 8-bit weights barely move the distribution; 4 bits move it more, and W4A4 with KV4 most.
  EXPECT_LT(mean("gptq_w8"), 1e-3);
  EXPECT_LT(mean("rtn_w8"), 1e-3);
  EXPECT_GT(mean("rtn_w4"), mean("rtn_w8"));
  EXPECT_GT(mean("gptq_w4"), mean("gptq_w8"));
  EXPECT_LT(mean("gptq_w4"), mean("rtn_w4"));  // calibrated on the text it is measured on: GPTQ wins clearly
  EXPECT_GT(mean("atom_w4a4"), mean("gptq_w8"));
  EXPECT_GT(kld["gptq_w8"]["top1_agreement"].get<double>(), 0.95);
}
