#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "test_util.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/half.h"

namespace fs = std::filesystem;

namespace toga {
namespace {

using test::ScratchDir;

ModelConfig tiny_config() {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.family = Family::Llama;
  c.hidden_size = 8;
  c.intermediate_size = 12;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 4;
  c.vocab_size = 10;
  c.max_position_embeddings = 32;
  c.tie_word_embeddings = false;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  return c;
}

// Every tensor the config needs, filled with distinct random fp32 values.
struct Weights {
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<std::vector<float>> data;

  explicit Weights(const ModelConfig& c, uint32_t seed = 7) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd;
    for (const auto& [name, shape] : expected_tensors(c)) {
      int64_t n = 1;
      for (auto d : shape) n *= d;
      std::vector<float> v(static_cast<size_t>(n));
      for (auto& x : v) x = nd(rng);
      names.push_back(name);
      shapes.push_back(shape);
      data.push_back(std::move(v));
    }
  }
  std::vector<TensorToWrite> views() const {
    std::vector<TensorToWrite> out;
    for (size_t i = 0; i < names.size(); ++i) out.push_back({names[i], DType::F32, shapes[i], data[i].data()});
    return out;
  }
  size_t find(const std::string& name) const {
    return static_cast<size_t>(std::find(names.begin(), names.end(), name) - names.begin());
  }
};

std::vector<float> read(const TensorSource& src, const std::string& name) {
  std::vector<float> v(static_cast<size_t>(src.info(name).numel()));
  src.read_f32(name, v.data());
  return v;
}

template <typename F>
void expect_error(F&& f, const std::string& path, const std::string& phrase) {
  try {
    f();
    ADD_FAILURE() << "no error; expected '" << phrase << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << "message lacks the path " << path << ": " << msg;
    EXPECT_NE(msg.find(phrase), std::string::npos) << "expected '" << phrase << "' in: " << msg;
  }
}

TEST(HFCheckpoint, RoundTripUnsharded) {
  ScratchDir dir;
  const ModelConfig c = tiny_config();
  const Weights w(c);
  const std::string ck_dir = dir / "model";
  HFWriteOptions opt;
  opt.extra_files["tokenizer.json"] = "{\"model\": {}}";
  opt.extra_files["generation_config.json"] = "{}";
  write_hf_checkpoint(ck_dir, c, w.views(), opt);
  EXPECT_TRUE(fs::exists(ck_dir + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(ck_dir + "/model.safetensors.index.json"));
  EXPECT_EQ(read_text_file(ck_dir + "/tokenizer.json"), "{\"model\": {}}");
  EXPECT_TRUE(fs::exists(ck_dir + "/generation_config.json"));
  // transformers insists on the "format" metadata
  SafetensorsFile raw(ck_dir + "/model.safetensors");
  EXPECT_EQ(raw.header().metadata.at("format"), "pt");

  Checkpoint ck = open_hf_checkpoint(ck_dir);
  EXPECT_EQ(ck.format, "hf");
  EXPECT_EQ(ck.path, ck_dir);
  EXPECT_TRUE(ck.quantization_config.is_null());
  EXPECT_EQ(ck.config.hidden_size, 8);
  EXPECT_EQ(ck.config.intermediate_size, 12);
  EXPECT_EQ(ck.config.num_hidden_layers, 2);
  EXPECT_EQ(ck.config.num_key_value_heads, 1);
  EXPECT_EQ(ck.config.vocab_size, 10);
  EXPECT_FALSE(ck.config.tie_word_embeddings);
  EXPECT_EQ(ck.tensors->description(), ck_dir);
  ASSERT_EQ(ck.tensors->tensors().size(), w.names.size());
  for (size_t i = 0; i < w.names.size(); ++i) {
    const TensorInfo info = ck.tensors->info(w.names[i]);
    EXPECT_EQ(info.dtype, DType::F32);
    EXPECT_EQ(info.shape, w.shapes[i]);
    EXPECT_EQ(info.file, ck_dir + "/model.safetensors");
    EXPECT_EQ(read(*ck.tensors, w.names[i]), w.data[i]) << w.names[i];
  }
  // Released pages come back from the file on the next read.
  for (const auto& n : w.names) ck.tensors->release(n);
  for (size_t i = 0; i < w.names.size(); ++i) EXPECT_EQ(read(*ck.tensors, w.names[i]), w.data[i]);
}

TEST(HFCheckpoint, ShardedAndUnshardedGiveIdenticalTensors) {
  ScratchDir dir;
  const ModelConfig c = tiny_config();
  const Weights w(c);
  write_hf_checkpoint(dir / "one", c, w.views());
  HFWriteOptions opt;
  opt.max_shard_bytes = 400;  // the embedding alone is 320 bytes: several shards
  write_hf_checkpoint(dir / "many", c, w.views(), opt);

  const auto index = nlohmann::json::parse(read_text_file(dir / "many/model.safetensors.index.json"));
  uint64_t total = 0;
  for (const auto& d : w.data) total += d.size() * sizeof(float);
  EXPECT_EQ(index.at("metadata").at("total_size").get<uint64_t>(), total);
  std::set<std::string> files;
  for (const auto& [name, file] : index.at("weight_map").items()) files.insert(file.get<std::string>());
  ASSERT_GT(files.size(), 2u);
  const size_t n = files.size();
  for (size_t i = 1; i <= n; ++i) {
    const std::string f = fmt::format("model-{:05d}-of-{:05d}.safetensors", i, n);
    EXPECT_TRUE(files.count(f)) << f;
    EXPECT_TRUE(fs::exists(dir / "many/" + f)) << f;
    EXPECT_LE(fs::file_size(dir / "many/" + f), 400u + 4096u);
  }
  EXPECT_FALSE(fs::exists(dir / "many/model.safetensors"));
  EXPECT_EQ(index.at("weight_map").size(), w.names.size());

  Checkpoint a = open_hf_checkpoint(dir / "one");
  Checkpoint b = open_hf_checkpoint(dir / "many");
  auto ta = a.tensors->tensors(), tb = b.tensors->tensors();
  ASSERT_EQ(ta.size(), tb.size());
  for (const auto& t : ta) {
    const TensorInfo u = b.tensors->info(t.name);
    EXPECT_EQ(u.shape, t.shape);
    EXPECT_EQ(u.dtype, t.dtype);
    EXPECT_NE(u.file.find(dir / "many/model-000"), std::string::npos);
    EXPECT_EQ(read(*a.tensors, t.name), read(*b.tensors, t.name)) << t.name;
  }

  // Rewriting a directory (allowed: toga wrote it) replaces it whole: no stale shards survive.
  HFWriteOptions again;
  again.output.on_existing = OnExisting::kReplace;
  write_hf_checkpoint(dir / "many", c, w.views(), again);
  EXPECT_FALSE(fs::exists(dir / "many/model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir / "many/model-00001-of-" + fmt::format("{:05d}", n) + ".safetensors"));
  EXPECT_TRUE(fs::exists(dir / "many/model.safetensors"));
}

TEST(HFCheckpoint, DecodesHalfBfloatAndDoubleToFloat) {
  ScratchDir dir;
  ModelConfig c = tiny_config();
  c.tie_word_embeddings = true;
  const Weights w(c);
  std::vector<TensorToWrite> views = w.views();
  // Store three tensors in other float formats; read_f32 must give the exact widened values.
  const size_t ih = w.find("model.layers.0.self_attn.q_proj.weight");
  const size_t ib = w.find("model.layers.1.mlp.down_proj.weight");
  const size_t id = w.find("model.norm.weight");
  std::vector<uint16_t> h, b;
  std::vector<double> d;
  for (float x : w.data[ih]) h.push_back(float_to_fp16(x));
  for (float x : w.data[ib]) b.push_back(float_to_bf16(x));
  for (float x : w.data[id]) d.push_back(static_cast<double>(x) + 1e-12);
  views[ih] = {w.names[ih], DType::F16, w.shapes[ih], h.data()};
  views[ib] = {w.names[ib], DType::BF16, w.shapes[ib], b.data()};
  views[id] = {w.names[id], DType::F64, w.shapes[id], d.data()};
  // A tied checkpoint may still carry lm_head.weight.
  views.push_back({names::lm_head(), DType::F32, w.shapes[0], w.data[0].data()});
  write_hf_checkpoint(dir / "m", c, views);

  Checkpoint ck = open_hf_checkpoint(dir / "m");
  EXPECT_TRUE(ck.config.tie_word_embeddings);
  EXPECT_EQ(ck.tensors->info(w.names[ih]).dtype, DType::F16);
  EXPECT_EQ(ck.tensors->info(w.names[ib]).dtype, DType::BF16);
  EXPECT_EQ(ck.tensors->info(w.names[id]).dtype, DType::F64);
  const auto rh = read(*ck.tensors, w.names[ih]);
  for (size_t i = 0; i < h.size(); ++i) EXPECT_EQ(rh[i], fp16_to_float(h[i]));
  const auto rb = read(*ck.tensors, w.names[ib]);
  for (size_t i = 0; i < b.size(); ++i) EXPECT_EQ(rb[i], bf16_to_float(b[i]));
  const auto rd = read(*ck.tensors, w.names[id]);
  for (size_t i = 0; i < d.size(); ++i) EXPECT_EQ(rd[i], static_cast<float>(d[i]));
}

TEST(HFCheckpoint, KeepsQuantizationConfigAndExtraConfig) {
  ScratchDir dir;
  const ModelConfig c = tiny_config();
  const Weights w(c);
  HFWriteOptions opt;
  opt.extra_config = {{"quantization_config", {{"quant_method", "toga"}, {"bits", 4}}}, {"custom", "x"}};
  write_hf_checkpoint(dir / "q", c, w.views(), opt);
  const auto cj = nlohmann::json::parse(read_text_file(dir / "q/config.json"));
  EXPECT_EQ(cj.at("custom"), "x");
  EXPECT_EQ(cj.at("hidden_size"), 8);
  Checkpoint ck = open_hf_checkpoint(dir / "q");
  EXPECT_EQ(ck.quantization_config.at("quant_method"), "toga");
  EXPECT_EQ(ck.quantization_config.at("bits"), 4);
}

TEST(HFCheckpoint, TensorsNotMatchingTheConfigAreClearErrors) {
  ScratchDir dir;
  const ModelConfig c = tiny_config();
  const Weights w(c);

  {  // missing tensor
    auto v = w.views();
    v.erase(v.begin() + static_cast<long>(w.find("model.layers.1.mlp.up_proj.weight")));
    write_hf_checkpoint(dir / "missing", c, v);
    expect_error([&] { open_hf_checkpoint(dir / "missing"); }, dir / "missing",
                 "missing tensor 'model.layers.1.mlp.up_proj.weight'");
  }
  {  // shape mismatch
    auto v = w.views();
    const size_t i = w.find("model.layers.0.self_attn.k_proj.weight");
    v[i].shape = {8, 4};
    write_hf_checkpoint(dir / "shape", c, v);
    expect_error([&] { open_hf_checkpoint(dir / "shape"); }, dir / "shape",
                 "'model.layers.0.self_attn.k_proj.weight' has shape [8, 4] but the config requires [4, 8]");
  }
  {  // integer dtype for a weight
    auto v = w.views();
    const size_t i = w.find("model.norm.weight");
    v[i].dtype = DType::I32;
    write_hf_checkpoint(dir / "dtype", c, v);
    expect_error([&] { open_hf_checkpoint(dir / "dtype"); }, dir / "dtype", "integer dtype I32");
  }
  {  // unexpected extra tensor
    auto v = w.views();
    v.push_back({"model.layers.0.mystery.weight", DType::F32, {8}, w.data[1].data()});
    write_hf_checkpoint(dir / "extra", c, v);
    expect_error([&] { open_hf_checkpoint(dir / "extra"); }, dir / "extra",
                 "unexpected tensor 'model.layers.0.mystery.weight'");
  }
  {  // config with more layers than the weights
    ModelConfig c3 = c;
    c3.num_hidden_layers = 3;
    write_hf_checkpoint(dir / "layers", c3, w.views());
    expect_error([&] { open_hf_checkpoint(dir / "layers"); }, dir / "layers",
                 "missing tensor 'model.layers.2.input_layernorm.weight'");
  }
}

TEST(HFCheckpoint, BadDirectoriesAreClearErrors) {
  ScratchDir dir;
  const ModelConfig c = tiny_config();
  const Weights w(c);
  HFWriteOptions sharded;
  sharded.max_shard_bytes = 400;

  expect_error([&] { open_hf_checkpoint(dir / "nothing"); }, dir / "nothing", "not a directory");

  fs::create_directories(dir / "noconfig");
  expect_error([&] { open_hf_checkpoint(dir / "noconfig"); }, dir / "noconfig", "no config.json");

  write_hf_checkpoint(dir / "arch", c, w.views());
  {
    auto cj = nlohmann::json::parse(read_text_file(dir / "arch/config.json"));
    cj["architectures"] = {"GPT2LMHeadModel"};
    write_text_atomically(dir / "arch/config.json", cj.dump());
  }
  expect_error([&] { open_hf_checkpoint(dir / "arch"); }, dir / "arch/config.json",
               "unsupported architecture 'GPT2LMHeadModel'");

  write_hf_checkpoint(dir / "badjson", c, w.views());
  write_text_atomically(dir / "badjson/config.json", "{\"hidden_size\": 8,");
  expect_error([&] { open_hf_checkpoint(dir / "badjson"); }, dir / "badjson/config.json", "invalid JSON");

  write_hf_checkpoint(dir / "noweights", c, w.views());
  fs::remove(dir / "noweights/model.safetensors");
  expect_error([&] { open_hf_checkpoint(dir / "noweights"); }, dir / "noweights", "no model.safetensors");

  write_hf_checkpoint(dir / "corrupt", c, w.views());
  fs::resize_file(dir / "corrupt/model.safetensors", fs::file_size(dir / "corrupt/model.safetensors") - 4);
  expect_error([&] { open_hf_checkpoint(dir / "corrupt"); }, dir / "corrupt/model.safetensors", "out of range");

  write_hf_checkpoint(dir / "shard", c, w.views(), sharded);
  {
    const auto index = nlohmann::json::parse(read_text_file(dir / "shard/model.safetensors.index.json"));
    const std::string lost = index.at("weight_map").at(names::final_norm()).get<std::string>();
    fs::remove(dir / "shard/" + lost);
    expect_error([&] { open_hf_checkpoint(dir / "shard"); }, dir / "shard/model.safetensors.index.json",
                 "missing shard '" + lost + "'");
  }

  // The index places a tensor in a shard that does not hold it.
  write_hf_checkpoint(dir / "misplaced", c, w.views(), sharded);
  {
    auto index = nlohmann::json::parse(read_text_file(dir / "misplaced/model.safetensors.index.json"));
    index["weight_map"][names::embed()] = index["weight_map"][names::final_norm()];
    write_text_atomically(dir / "misplaced/model.safetensors.index.json", index.dump());
  }
  expect_error([&] { open_hf_checkpoint(dir / "misplaced"); }, dir / "misplaced/model-0000",
               "'model.embed_tokens.weight'");

  // An index naming a file outside the directory.
  write_hf_checkpoint(dir / "escape", c, w.views(), sharded);
  {
    auto index = nlohmann::json::parse(read_text_file(dir / "escape/model.safetensors.index.json"));
    index["weight_map"][names::embed()] = "../arch/model.safetensors";
    write_text_atomically(dir / "escape/model.safetensors.index.json", index.dump());
  }
  expect_error([&] { open_hf_checkpoint(dir / "escape"); }, dir / "escape/model.safetensors.index.json",
               "not a file in this directory");
}

TEST(HFCheckpoint, SameTensorInTwoShardsIsAnError) {
  ScratchDir dir;
  const ModelConfig c = tiny_config();
  const Weights w(c);
  write_hf_checkpoint(dir / "dup", c, w.views());
  // Hand-built shards: the second repeats the final norm.
  const std::string d = dir / "dup";
  fs::remove(d + "/model.safetensors");
  auto v = w.views();
  std::vector<TensorToWrite> first(v.begin(), v.begin() + 5), second(v.begin() + 5, v.end());
  second.push_back(first[1]);
  write_safetensors(d + "/model-00001-of-00002.safetensors", first);
  write_safetensors(d + "/model-00002-of-00002.safetensors", second);
  nlohmann::json index;
  for (const auto& t : first) index["weight_map"][t.name] = "model-00001-of-00002.safetensors";
  for (const auto& t : second) index["weight_map"][t.name] = "model-00002-of-00002.safetensors";
  index["weight_map"][first[1].name] = "model-00001-of-00002.safetensors";
  write_text_atomically(d + "/model.safetensors.index.json", index.dump());
  expect_error([&] { open_hf_checkpoint(d); }, d + "/model-00002-of-00002.safetensors",
               "the same name in two shards");
}

TEST(HFCheckpoint, WriterRejectsBadExtraFiles) {
  ScratchDir dir;
  const ModelConfig c = tiny_config();
  const Weights w(c);
  HFWriteOptions opt;
  opt.extra_files["../evil.json"] = "{}";
  EXPECT_THROW(write_hf_checkpoint(dir / "a", c, w.views(), opt), Error);
  opt.extra_files.clear();
  opt.extra_files["config.json"] = "{}";
  EXPECT_THROW(write_hf_checkpoint(dir / "a", c, w.views(), opt), Error);
  opt.extra_files.clear();
  opt.extra_files[kOutputMarker] = "{}";  // toga's output marker is written by toga alone
  EXPECT_THROW(write_hf_checkpoint(dir / "a", c, w.views(), opt), Error);
  EXPECT_FALSE(fs::exists(dir / "a"));
}

}  // namespace
}  // namespace toga
