// read_f32_rows returns exactly the rows read_f32 decodes, for every format and row range: HF
// safetensors in each float dtype across shards, GGUF with quantized and llama.cpp-permuted q/k
// rows, llama2.c (permuted, GQA), memory, and the whole-tensor default. Released rows read again
// from the file unchanged, and ranges outside the tensor are errors.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "io/checkpoint.h"
#include "io/gguf.h"
#include "test_gguf_util.h"
#include "test_util.h"
#include "util/error.h"
#include "util/half.h"

namespace toga {
namespace {

// Forwards only what every source must implement, so read_f32_rows is the base class default.
class WholeTensorsOnly : public TensorSource {
 public:
  explicit WholeTensorsOnly(const TensorSource& inner) : inner_(inner) {}
  std::vector<TensorInfo> tensors() const override { return inner_.tensors(); }
  void read_f32(const std::string& name, float* dst) const override { inner_.read_f32(name, dst); }
  std::string description() const override { return inner_.description(); }

 private:
  const TensorSource& inner_;
};

bool same_bits(const float* a, const float* b, int64_t n) {
  return n == 0 || std::memcmp(a, b, static_cast<size_t>(n) * sizeof(float)) == 0;
}

// Row ranges covering whole tensors, single rows at both ends, empty reads, ranges that start and
// end inside a head (q/k rows are permuted within heads), and random ones.
std::vector<std::pair<int64_t, int64_t>> ranges_for(int64_t rows, std::mt19937& rng) {
  std::vector<std::pair<int64_t, int64_t>> r = {{0, rows}, {0, 1}, {rows - 1, 1}, {0, 0}, {rows, 0}};
  if (rows > 3) r.push_back({1, rows - 2});
  if (rows > 16) r.push_back({5, 11});
  for (int i = 0; i < 4; ++i) {
    const int64_t b = std::uniform_int_distribution<int64_t>(0, rows - 1)(rng);
    r.push_back({b, std::uniform_int_distribution<int64_t>(1, rows - b)(rng)});
  }
  return r;
}

void expect_rows_match_full_reads(const TensorSource& src, bool expect_row_reads) {
  std::mt19937 rng(17);
  const float sentinel = 12345.678f;
  for (const auto& t : src.tensors()) {
    SCOPED_TRACE(t.name + " " + shape_str(t.shape) + " " + dtype_name(t.dtype));
    const int64_t rows = tensor_rows(t.shape), cols = tensor_row_length(t.shape);
    ASSERT_EQ(rows * cols, t.numel());
    if (expect_row_reads && t.shape.size() >= 2) EXPECT_TRUE(src.row_reads(t.name));
    std::vector<float> full(static_cast<size_t>(t.numel()));
    src.read_f32(t.name, full.data());
    for (const auto& [r0, n] : ranges_for(rows, rng)) {
      std::vector<float> got(static_cast<size_t>(n * cols) + 1, sentinel);
      src.read_f32_rows(t.name, r0, n, got.data());
      EXPECT_TRUE(same_bits(got.data(), full.data() + r0 * cols, n * cols)) << "rows [" << r0 << ", " << r0 + n << ")";
      EXPECT_EQ(got.back(), sentinel) << "wrote past rows [" << r0 << ", " << r0 + n << ")";
    }
    // Dropping pages only makes the kernel read them from the file again.
    src.release_rows(t.name, 0, rows);
    src.release_rows(t.name, rows / 2, rows - rows / 2);
    src.release(t.name);
    std::vector<float> again(full.size());
    src.read_f32_rows(t.name, 0, rows, again.data());
    EXPECT_TRUE(same_bits(again.data(), full.data(), t.numel()));
    for (const auto& [r0, n] : std::vector<std::pair<int64_t, int64_t>>{{rows, 1}, {rows - 1, 2}, {-1, 1}, {0, -1}})
      EXPECT_THROW(src.read_f32_rows(t.name, r0, n, again.data()), Error) << r0 << " " << n;
  }
}

ModelConfig small_llama() {
  ModelConfig c;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.vocab_size = 100;
  return c;
}

TEST(RowReads, HFSafetensorsEveryFloatDtypeAcrossShards) {
  test::ScratchDir dir;
  const ModelConfig c = small_llama();
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const DType dtypes[] = {DType::F32, DType::F16, DType::BF16, DType::F64};
  std::vector<std::vector<uint8_t>> storage;
  std::vector<TensorToWrite> tensors;
  int i = 0;
  for (const auto& [name, shape] : expected_tensors(c)) {
    const DType d = dtypes[i++ % 4];
    int64_t n = 1;
    for (auto x : shape) n *= x;
    std::vector<uint8_t> bytes(static_cast<size_t>(n) * dtype_size(d));
    for (int64_t k = 0; k < n; ++k) {
      const float v = normal(rng);
      uint8_t* p = bytes.data() + k * dtype_size(d);
      if (d == DType::F32) std::memcpy(p, &v, 4);
      if (d == DType::F16 || d == DType::BF16) {
        const uint16_t h = d == DType::F16 ? float_to_fp16(v) : float_to_bf16(v);
        std::memcpy(p, &h, 2);
      }
      if (d == DType::F64) {
        const double x = v;
        std::memcpy(p, &x, 8);
      }
    }
    storage.push_back(std::move(bytes));
    tensors.push_back({name, d, shape, storage.back().data()});
  }
  HFWriteOptions opts;
  opts.max_shard_bytes = 30000;
  write_hf_checkpoint(dir / "hf", c, tensors, opts);
  const Checkpoint ck = open_checkpoint(dir / "hf");
  ASSERT_TRUE(std::filesystem::exists(dir / "hf/model.safetensors.index.json"));
  expect_rows_match_full_reads(*ck.tensors, true);
  expect_rows_match_full_reads(WholeTensorsOnly(*ck.tensors), false);
}

// A Llama GGUF as llama.cpp lays it out, q/k rows permuted within heads and stored quantized,
// with permuted 1-D biases (read whole) and every other supported type somewhere.
TEST(RowReads, GGUFQuantizedAndPermutedRows) {
  test::ScratchDir dir;
  const int hidden = 256, heads = 4, kv = 2, d = 64, ffn = 512, vocab = 64;
  GGUFWriter w;
  w.set_string("general.architecture", "llama");
  w.set_uint32("llama.block_count", 1);
  w.set_uint32("llama.embedding_length", hidden);
  w.set_uint32("llama.feed_forward_length", ffn);
  w.set_uint32("llama.attention.head_count", heads);
  w.set_uint32("llama.attention.head_count_kv", kv);
  w.set_float32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.set_uint32("llama.context_length", 256);
  std::vector<std::string> tokens;
  for (int i = 0; i < vocab; ++i) tokens.push_back("t" + std::to_string(i));
  w.set_string_array("tokenizer.ggml.tokens", tokens);
  std::mt19937 rng(9);
  auto add = [&](const std::string& name, GGMLType type, std::vector<uint64_t> ne) {
    int64_t n = 1;
    for (auto x : ne) n *= static_cast<int64_t>(x);
    w.add_tensor(name, type, ne, test::random_tensor_bytes(type, n, rng));
  };
  add("token_embd.weight", GGMLType::Q4_1, {hidden, vocab});
  add("output.weight", GGMLType::Q5_1, {hidden, vocab});
  add("output_norm.weight", GGMLType::F32, {hidden});
  add("blk.0.attn_norm.weight", GGMLType::F32, {hidden});
  add("blk.0.ffn_norm.weight", GGMLType::F32, {hidden});
  add("blk.0.attn_q.weight", GGMLType::Q8_0, {hidden, heads * d});
  add("blk.0.attn_k.weight", GGMLType::Q4_K, {hidden, kv * d});
  add("blk.0.attn_v.weight", GGMLType::F16, {hidden, kv * d});
  add("blk.0.attn_q.bias", GGMLType::F32, {heads * d});
  add("blk.0.attn_k.bias", GGMLType::F32, {kv * d});
  add("blk.0.attn_v.bias", GGMLType::F32, {kv * d});
  add("blk.0.attn_output.weight", GGMLType::BF16, {heads * d, hidden});
  add("blk.0.ffn_gate.weight", GGMLType::Q5_K, {hidden, ffn});
  add("blk.0.ffn_up.weight", GGMLType::Q6_K, {hidden, ffn});
  add("blk.0.ffn_down.weight", GGMLType::Q4_0, {ffn, hidden});
  w.write(dir / "m.gguf");
  const Checkpoint ck = open_checkpoint(dir / "m.gguf");
  ASSERT_TRUE(ck.config.attention_bias);
  expect_rows_match_full_reads(*ck.tensors, true);
  expect_rows_match_full_reads(WholeTensorsOnly(*ck.tensors), false);
}

TEST(RowReads, RealSmolLM2GGUF) {
  TOGA_REQUIRE_FILE(test::smollm2_path());
  const Checkpoint ck = open_checkpoint(test::smollm2_path());
  expect_rows_match_full_reads(*ck.tensors, true);
}

TEST(RowReads, Llama2cStories260K) {
  TOGA_REQUIRE_FILE(test::stories260k_path());
  const Checkpoint ck = open_checkpoint(test::stories260k_path());
  ASSERT_NE(ck.config.num_key_value_heads, ck.config.num_attention_heads);  // GQA: q and k permute differently
  expect_rows_match_full_reads(*ck.tensors, true);
}

TEST(RowReads, MemorySourceAndTheDefault) {
  MemoryTensorSource src;
  std::mt19937 rng(4);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const auto& [name, shape] : std::vector<std::pair<std::string, std::vector<int64_t>>>{
           {"matrix", {37, 13}}, {"vector", {29}}, {"cube", {5, 4, 3}}, {"scalar", {}}}) {
    int64_t n = 1;
    for (auto x : shape) n *= x;
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = normal(rng);
    src.add(name, shape, v);
  }
  expect_rows_match_full_reads(src, true);
  expect_rows_match_full_reads(WholeTensorsOnly(src), false);
  EXPECT_FALSE(WholeTensorsOnly(src).row_reads("matrix"));
}

}  // namespace
}  // namespace toga
