// The toga binary end to end: bad input is a clear one-line error naming the file (exit code 1, no
// crash), failed runs leave no half-written output, and GGUF conversion keeps logits identical.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "io/checkpoint.h"
#include "model/model.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "util/atomic_file.h"

using namespace toga;
using namespace toga::test;
namespace fs = std::filesystem;

namespace {

struct Result {
  int code;
  std::string output;
};

Result run_toga(const std::string& args) {
  const std::string cmd = std::string(TOGA_CLI) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf{};
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) out.append(buf.data(), n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), out};
}

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
