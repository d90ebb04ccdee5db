#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "io/checkpoint.h"
#include "test_util.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace toga {
namespace {

using test::ScratchDir;

std::vector<float> read(const TensorSource& src, const std::string& name) {
  std::vector<float> v(static_cast<size_t>(src.info(name).numel()));
  src.read_f32(name, v.data());
  return v;
}

// The raw file as llama2.c's run.c sees it: header ints, then one flat float array.
struct RawLlama2c {
  int32_t dim, hidden, layers, heads, kv_heads, vocab, seq_len;
  std::vector<float> w;

  explicit RawLlama2c(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    int32_t h[7];
    in.read(reinterpret_cast<char*>(h), sizeof h);
    dim = h[0], hidden = h[1], layers = h[2], heads = h[3], kv_heads = h[4], vocab = h[5], seq_len = h[6];
    w.resize((fs::file_size(path) - sizeof h) / sizeof(float));
    in.read(reinterpret_cast<char*>(w.data()), static_cast<std::streamsize>(w.size() * sizeof(float)));
  }
  int64_t head_size() const { return dim / heads; }
  int64_t kv_dim() const { return head_size() * kv_heads; }
  int64_t abs_vocab() const { return std::abs(vocab); }
  // Offsets (in floats) following run.c's memory_map_weights.
  int64_t off_embed() const { return 0; }
  int64_t off_rms_att() const { return off_embed() + abs_vocab() * dim; }
  int64_t off_wq() const { return off_rms_att() + int64_t(layers) * dim; }
  int64_t off_wk() const { return off_wq() + int64_t(layers) * dim * dim; }
  int64_t off_wv() const { return off_wk() + int64_t(layers) * kv_dim() * dim; }
  int64_t off_wo() const { return off_wv() + int64_t(layers) * kv_dim() * dim; }
  int64_t off_rms_ffn() const { return off_wo() + int64_t(layers) * dim * dim; }
  int64_t off_w1() const { return off_rms_ffn() + int64_t(layers) * dim; }
  int64_t off_w2() const { return off_w1() + int64_t(layers) * dim * hidden; }
  int64_t off_w3() const { return off_w2() + int64_t(layers) * dim * hidden; }
  int64_t off_rms_final() const { return off_w3() + int64_t(layers) * dim * hidden; }
  int64_t off_freq_real() const { return off_rms_final() + dim; }
  int64_t off_freq_imag() const { return off_freq_real() + int64_t(seq_len) * head_size() / 2; }
  int64_t off_wcls() const { return off_freq_imag() + int64_t(seq_len) * head_size() / 2; }

  std::vector<float> slice(int64_t off, int64_t n) const {
    return std::vector<float>(w.begin() + off, w.begin() + off + n);
  }
};

// y = W x for a row-major [rows, cols] matrix, in double.
std::vector<double> matvec(const float* W, int64_t rows, int64_t cols, const std::vector<double>& x) {
  std::vector<double> y(static_cast<size_t>(rows), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) y[r] += double(W[r * cols + c]) * x[c];
  return y;
}

// llama2.c's RoPE: rotate adjacent pairs (2i, 2i+1) of each head by pos * theta^(-2i/hs).
void rope_adjacent(std::vector<double>& v, int64_t head_size, int pos) {
  for (size_t i = 0; i < v.size(); i += 2) {
    const int64_t hd = static_cast<int64_t>(i) % head_size;
    const double a = pos * std::pow(10000.0, -double(hd) / double(head_size));
    const double v0 = v[i], v1 = v[i + 1];
    v[i] = v0 * std::cos(a) - v1 * std::sin(a);
    v[i + 1] = v0 * std::sin(a) + v1 * std::cos(a);
  }
}

// The HF (rotate_half) RoPE: pair (i, i + hs/2) of each head, same frequencies.
void rope_halves(std::vector<double>& v, int64_t head_size, int pos) {
  const int64_t half = head_size / 2;
  for (size_t h0 = 0; h0 < v.size(); h0 += static_cast<size_t>(head_size))
    for (int64_t i = 0; i < half; ++i) {
      const double a = pos * std::pow(10000.0, -2.0 * double(i) / double(head_size));
      const double x1 = v[h0 + i], x2 = v[h0 + i + half];
      v[h0 + i] = x1 * std::cos(a) - x2 * std::sin(a);
      v[h0 + i + half] = x2 * std::cos(a) + x1 * std::sin(a);
    }
}

// Attention logits q_h . k_{g(h)} for every query head h (GQA: g(h) = h / (heads / kv_heads)).
std::vector<double> scores(const std::vector<double>& q, const std::vector<double>& k, int64_t heads,
                           int64_t kv_heads, int64_t head_size) {
  std::vector<double> s;
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t g = h / (heads / kv_heads);
    double acc = 0;
    for (int64_t i = 0; i < head_size; ++i) acc += q[h * head_size + i] * k[g * head_size + i];
    s.push_back(acc);
  }
  return s;
}

TEST(Llama2c, Stories260KLoadsWithTheRightConfig) {
  const std::string path = test::stories260k_path();
  TOGA_REQUIRE_FILE(path);
  Checkpoint ck = open_llama2c_checkpoint(path);
  EXPECT_EQ(ck.format, "llama2c");
  EXPECT_EQ(ck.path, path);
  EXPECT_TRUE(ck.quantization_config.is_null());
  const ModelConfig& c = ck.config;
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 172);
  EXPECT_EQ(c.num_hidden_layers, 5);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_position_embeddings, 512);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int>{2});
  EXPECT_EQ(ck.tensors->tensors().size(), 1u + 9u * 5u + 1u);
  EXPECT_FALSE(ck.tensors->has(names::lm_head()));
  EXPECT_EQ(c.num_parameters(), 264128 - 4096);  // file floats minus the RoPE tables
  EXPECT_EQ(ck.tensors->description(), path);
}

TEST(Llama2c, Stories260KTensorsMatchTheRawFile) {
  const std::string path = test::stories260k_path();
  TOGA_REQUIRE_FILE(path);
  const RawLlama2c raw(path);
  ASSERT_EQ(raw.off_wcls(), static_cast<int64_t>(raw.w.size())) << "tied file: nothing after the RoPE tables";
  Checkpoint ck = open_llama2c_checkpoint(path);
  const TensorSource& s = *ck.tensors;
  const int64_t d = raw.dim, f = raw.hidden, kv = raw.kv_dim();
  EXPECT_EQ(read(s, names::embed()), raw.slice(raw.off_embed(), raw.abs_vocab() * d));
  EXPECT_EQ(read(s, names::final_norm()), raw.slice(raw.off_rms_final(), d));
  for (int l = 0; l < raw.layers; ++l) {
    EXPECT_EQ(read(s, names::layer(l, "input_layernorm.weight")), raw.slice(raw.off_rms_att() + l * d, d));
    EXPECT_EQ(read(s, names::layer(l, "post_attention_layernorm.weight")), raw.slice(raw.off_rms_ffn() + l * d, d));
    EXPECT_EQ(read(s, names::layer(l, "self_attn.v_proj.weight")), raw.slice(raw.off_wv() + l * kv * d, kv * d));
    EXPECT_EQ(read(s, names::layer(l, "self_attn.o_proj.weight")), raw.slice(raw.off_wo() + l * d * d, d * d));
    EXPECT_EQ(read(s, names::layer(l, "mlp.gate_proj.weight")), raw.slice(raw.off_w1() + l * f * d, f * d));
    EXPECT_EQ(read(s, names::layer(l, "mlp.down_proj.weight")), raw.slice(raw.off_w2() + l * f * d, f * d));
    EXPECT_EQ(read(s, names::layer(l, "mlp.up_proj.weight")), raw.slice(raw.off_w3() + l * f * d, f * d));
    // q/k hold the same rows, reordered within each head.
    auto q = read(s, names::layer(l, "self_attn.q_proj.weight"));
    auto rq = raw.slice(raw.off_wq() + l * d * d, d * d);
    EXPECT_NE(q, rq);
    std::sort(q.begin(), q.end());
    std::sort(rq.begin(), rq.end());
    EXPECT_EQ(q, rq);
  }
  // The file's legacy RoPE tables confirm theta = 10000 (cos/sin of pos * theta^(-2i/hs)).
  const int64_t hs = raw.head_size();
  for (int pos : {0, 1, 7, 511})
    for (int64_t i = 0; i < hs / 2; ++i) {
      const double a = pos * std::pow(10000.0, -2.0 * double(i) / double(hs));
      EXPECT_NEAR(raw.w[raw.off_freq_real() + pos * hs / 2 + i], std::cos(a), 1e-5);
      EXPECT_NEAR(raw.w[raw.off_freq_imag() + pos * hs / 2 + i], std::sin(a), 1e-5);
    }
}

// The permutation is checked against its purpose: llama2.c-style RoPE on the file's rows and
// HF-style RoPE on the loaded rows must give the same attention logits q.k for every head.
TEST(Llama2c, QKPermutationPreservesAttentionScores) {
  const std::string path = test::stories260k_path();
  TOGA_REQUIRE_FILE(path);
  const RawLlama2c raw(path);
  Checkpoint ck = open_llama2c_checkpoint(path);
  const int64_t d = raw.dim, kv = raw.kv_dim(), hs = raw.head_size();
  std::mt19937 rng(42);
  std::normal_distribution<double> nd;
  for (int l = 0; l < raw.layers; ++l) {
    const auto q_hf = read(*ck.tensors, names::layer(l, "self_attn.q_proj.weight"));
    const auto k_hf = read(*ck.tensors, names::layer(l, "self_attn.k_proj.weight"));
    const float* q_raw = raw.w.data() + raw.off_wq() + l * d * d;
    const float* k_raw = raw.w.data() + raw.off_wk() + l * kv * d;
    for (auto [pq, pk] : {std::pair{0, 0}, {5, 2}, {17, 17}, {300, 41}}) {
      std::vector<double> xq(d), xk(d);
      for (auto& v : xq) v = nd(rng);
      for (auto& v : xk) v = nd(rng);
      auto q1 = matvec(q_raw, d, d, xq), k1 = matvec(k_raw, kv, d, xk);
      rope_adjacent(q1, hs, pq);
      rope_adjacent(k1, hs, pk);
      auto q2 = matvec(q_hf.data(), d, d, xq), k2 = matvec(k_hf.data(), kv, d, xk);
      rope_halves(q2, hs, pq);
      rope_halves(k2, hs, pk);
      const auto s1 = scores(q1, k1, raw.heads, raw.kv_heads, hs);
      const auto s2 = scores(q2, k2, raw.heads, raw.kv_heads, hs);
      for (size_t h = 0; h < s1.size(); ++h)
        EXPECT_NEAR(s1[h], s2[h], 1e-9 * (1 + std::abs(s1[h]))) << "layer " << l << " head " << h;
      // Without the permutation the scores would differ (the check has teeth).
      auto q3 = matvec(q_raw, d, d, xq), k3 = matvec(k_raw, kv, d, xk);
      rope_halves(q3, hs, pq);
      rope_halves(k3, hs, pk);
      if (pq != pk) {
        const auto s3 = scores(q3, k3, raw.heads, raw.kv_heads, hs);
        double diff = 0;
        for (size_t h = 0; h < s1.size(); ++h) diff = std::max(diff, std::abs(s3[h] - s1[h]));
        EXPECT_GT(diff, 1e-3);
      }
    }
  }
}

// A small synthetic llama2.c file: header, then float i at position i of the weight array.
std::string write_synthetic(const ScratchDir& dir, const std::string& name, std::vector<int32_t> header,
                            int64_t extra_floats = 0) {
  const int64_t dim = header[0], hidden = header[1], L = header[2], heads = header[3], kvh = header[4];
  const int64_t vocab = std::abs(header[5]), seq = header[6], hs = dim / heads, kv = hs * kvh;
  int64_t n = vocab * dim + L * (2 * dim + 2 * dim * dim + 2 * kv * dim + 3 * dim * hidden) + dim + seq * hs;
  if (header[5] < 0) n += vocab * dim;
  n += extra_floats;
  std::vector<float> w(static_cast<size_t>(std::max<int64_t>(n, 0)));
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i);
  const std::string path = dir / name;
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(header.data()), 28);
  out.write(reinterpret_cast<const char*>(w.data()), static_cast<std::streamsize>(w.size() * sizeof(float)));
  return path;
}

TEST(Llama2c, UntiedSyntheticFileHasClassifierAndPermutedRows) {
  ScratchDir dir;
  // dim 8, hidden 6, 2 layers, 2 heads (hs 4), 1 kv head, vocab -5 (untied), seq 3
  const std::string path = write_synthetic(dir, "untied.bin", {8, 6, 2, 2, 1, -5, 3});
  Checkpoint ck = open_llama2c_checkpoint(path);
  EXPECT_FALSE(ck.config.tie_word_embeddings);
  EXPECT_EQ(ck.config.vocab_size, 5);
  EXPECT_EQ(ck.config.max_position_embeddings, 3);
  ASSERT_TRUE(ck.tensors->has(names::lm_head()));
  const RawLlama2c raw(path);
  EXPECT_EQ(read(*ck.tensors, names::lm_head()), raw.slice(raw.off_wcls(), 5 * 8));
  EXPECT_EQ(raw.off_wcls() + 5 * 8, static_cast<int64_t>(raw.w.size()));
  // Head row order: file rows (0,1,2,3) of a head hold pairs (0,1),(2,3); HF order is 0,2,1,3.
  const auto q = read(*ck.tensors, names::layer(1, "self_attn.q_proj.weight"));
  const int64_t base = raw.off_wq() + 64;
  const int order[8] = {0, 2, 1, 3, 4, 6, 5, 7};
  for (int r = 0; r < 8; ++r)
    for (int c = 0; c < 8; ++c) EXPECT_EQ(q[r * 8 + c], float(base + order[r] * 8 + c)) << r << "," << c;
  const auto k = read(*ck.tensors, names::layer(0, "self_attn.k_proj.weight"));
  ASSERT_EQ(k.size(), 32u);
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 8; ++c) EXPECT_EQ(k[r * 8 + c], float(raw.off_wk() + order[r] * 8 + c));
  // release never changes what a later read returns
  ck.tensors->release(names::lm_head());
  EXPECT_EQ(read(*ck.tensors, names::lm_head()), raw.slice(raw.off_wcls(), 5 * 8));
}

void expect_error(const std::string& path, const std::string& phrase) {
  try {
    open_llama2c_checkpoint(path);
    ADD_FAILURE() << path << ": accepted, expected '" << phrase << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << msg;
    EXPECT_NE(msg.find(phrase), std::string::npos) << "expected '" << phrase << "' in: " << msg;
  }
}

TEST(Llama2c, BadFilesAreClearErrors) {
  ScratchDir dir;
  const std::vector<int32_t> good = {8, 6, 2, 2, 1, 5, 3};
  EXPECT_NO_THROW(open_llama2c_checkpoint(write_synthetic(dir, "good.bin", good)));
  expect_error(write_synthetic(dir, "short.bin", good, -1), "truncated file");
  expect_error(write_synthetic(dir, "long.bin", good, 1), "trailing bytes");
  // A tied header on a file that still carries a classifier: it is left over.
  expect_error(write_synthetic(dir, "tied_extra.bin", good, 5 * 8), "does not match");
  {
    const std::string p = dir / "tiny.bin";
    std::ofstream(p, std::ios::binary).write("\x08\x00\x00\x00", 4);
    expect_error(p, "shorter than the 28-byte llama2.c header");
  }
  auto header_only = [&](const std::string& name, std::vector<int32_t> h) {
    const std::string p = dir / name;
    std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(h.data()), 28);
    return p;
  };
  expect_error(header_only("neg_dim.bin", {-8, 6, 2, 2, 1, 5, 3}), "dim is -8");
  expect_error(header_only("zero_layers.bin", {8, 6, 0, 2, 1, 5, 3}), "n_layers is 0");
  expect_error(header_only("zero_vocab.bin", {8, 6, 2, 2, 1, 0, 3}), "vocab_size is 0");
  expect_error(header_only("heads.bin", {8, 6, 2, 3, 1, 5, 3}), "not a multiple of n_heads");
  expect_error(header_only("kv_heads.bin", {8, 6, 2, 2, 3, 5, 3}), "not a multiple of n_kv_heads");
  expect_error(header_only("odd_head.bin", {6, 6, 2, 2, 1, 5, 3}), "odd");
  expect_error(header_only("huge.bin", {1 << 30, 1 << 30, 1 << 30, 2, 1, 5, 3}), "impossible size");
  expect_error(header_only("big.bin", {4096, 11008, 32, 32, 32, 32000, 4096}), "truncated file");
  expect_error(header_only("magic.bin", {0x616b3432, 1, 8, 6, 2, 2, 1}), "not supported");
}

}  // namespace
}  // namespace toga
