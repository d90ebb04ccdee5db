// GGUF as a checkpoint: metadata -> config, GGUF names/shapes -> HF names/shapes, llama.cpp's q/k
// row order undone (proved with RoPE itself), and the real SmolLM2 file.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>

#include "test_util.h"
#include "io/checkpoint.h"
#include "io/gguf.h"
#include "test_gguf_util.h"
#include "util/error.h"

namespace toga {
namespace {

// ---------------------------------------------------------------------------------------------
// Synthetic files

struct Synth {
  std::string arch = "llama";
  int hidden = 256, heads = 4, kv = 2, head_dim = 64, ffn = 512, vocab = 64, layers = 2;
  bool tied = true;
  bool qkv_bias = false;
  bool qk_norm = false;
  bool explicit_head_dim = false;
  float eps = 1e-5f, theta = 10000.0f;
};

// llama.cpp's converter (convert_hf_to_gguf.py, LlamaModel.permute) stores each head's rows as
// reshape(n_head, 2, d/2, cols).swapaxes(1, 2): stored row 2i+j of a head is HF row j*d/2+i.
std::vector<float> llama_cpp_permute(const std::vector<float>& w, int n_head, int64_t cols) {
  const int64_t rows = static_cast<int64_t>(w.size()) / cols, d = rows / n_head, half = d / 2;
  std::vector<float> out(w.size());
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j)
        for (int64_t c = 0; c < cols; ++c)
          out[((h * d) + 2 * i + j) * cols + c] = w[((h * d) + j * half + i) * cols + c];
  return out;
}

std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

struct Built {
  GGUFWriter w;
  std::map<std::string, std::vector<float>> hf;  // the HF tensors the loader must return
};

// Every tensor an HF model of this shape has, written the way llama.cpp's converter would (q/k
// permuted for llama), mostly F32; layer 1's k_proj is F16 and layer 0's up_proj Q8_0.
Built build(const Synth& s, uint32_t seed = 1) {
  Built out;
  GGUFWriter& w = out.w;
  const std::string A = s.arch;
  w.set_string("general.architecture", A);
  w.set_uint32(A + ".block_count", s.layers);
  w.set_uint32(A + ".embedding_length", s.hidden);
  w.set_uint32(A + ".feed_forward_length", s.ffn);
  w.set_uint32(A + ".attention.head_count", s.heads);
  w.set_uint32(A + ".attention.head_count_kv", s.kv);
  w.set_float32(A + ".attention.layer_norm_rms_epsilon", s.eps);
  w.set_float32(A + ".rope.freq_base", s.theta);
  w.set_uint32(A + ".context_length", 4096);
  w.set_uint32(A + ".rope.dimension_count", s.head_dim);
  if (s.explicit_head_dim) {
    w.set_uint32(A + ".attention.key_length", s.head_dim);
    w.set_uint32(A + ".attention.value_length", s.head_dim);
  }
  std::vector<std::string> tokens;
  for (int i = 0; i < s.vocab; ++i) tokens.push_back("tok" + std::to_string(i));
  w.set_string_array("tokenizer.ggml.tokens", tokens);
  w.set_uint32("tokenizer.ggml.bos_token_id", 1);
  w.set_uint32("tokenizer.ggml.eos_token_id", 2);

  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.5f);
  const bool permute = A == "llama";
  const int64_t q = int64_t(s.heads) * s.head_dim, kvd = int64_t(s.kv) * s.head_dim;
  // HF shape [rows, cols]; GGUF ne = [cols, rows].
  auto add = [&](const std::string& gguf, const std::string& hf, int64_t rows, int64_t cols, int permute_heads,
                 GGMLType type = GGMLType::F32) {
    std::vector<float> v(static_cast<size_t>(rows * cols));
    for (auto& x : v) x = normal(rng);
    std::vector<uint64_t> ne = cols == 1 ? std::vector<uint64_t>{uint64_t(rows)} : std::vector<uint64_t>{uint64_t(cols), uint64_t(rows)};
    if (type == GGMLType::F16)
      for (auto& x : v) x = fp16_to_float(float_to_fp16(x));  // representable, so the round trip is exact
    std::vector<float> stored = permute && permute_heads ? llama_cpp_permute(v, permute_heads, cols) : v;
    std::vector<uint8_t> bytes;
    if (type == GGMLType::F32) {
      bytes = f32_bytes(stored);
    } else if (type == GGMLType::F16) {
      bytes.resize(stored.size() * 2);
      for (size_t i = 0; i < stored.size(); ++i) {
        const uint16_t h = float_to_fp16(stored[i]);
        std::memcpy(bytes.data() + 2 * i, &h, 2);
      }
    } else {  // a block type: random codes; the HF tensor is their decode
      bytes = test::random_tensor_bytes(type, rows * cols, rng);
      dequantize(type, bytes.data(), v.data(), rows * cols);
    }
    w.add_tensor(gguf, type, ne, bytes);
    out.hf[hf] = v;
  };
  add("token_embd.weight", names::embed(), s.vocab, s.hidden, 0);
  for (int l = 0; l < s.layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    auto L = [&](const char* x) { return names::layer(l, x); };
    add(b + "attn_norm.weight", L("input_layernorm.weight"), s.hidden, 1, 0);
    add(b + "attn_q.weight", L("self_attn.q_proj.weight"), q, s.hidden, s.heads);
    add(b + "attn_k.weight", L("self_attn.k_proj.weight"), kvd, s.hidden, s.kv,
        l == 1 ? GGMLType::F16 : GGMLType::F32);
    add(b + "attn_v.weight", L("self_attn.v_proj.weight"), kvd, s.hidden, 0);
    add(b + "attn_output.weight", L("self_attn.o_proj.weight"), s.hidden, q, 0);
    if (s.qkv_bias) {
      add(b + "attn_q.bias", L("self_attn.q_proj.bias"), q, 1, s.heads);
      add(b + "attn_k.bias", L("self_attn.k_proj.bias"), kvd, 1, s.kv);
      add(b + "attn_v.bias", L("self_attn.v_proj.bias"), kvd, 1, 0);
    }
    if (s.qk_norm) {
      add(b + "attn_q_norm.weight", L("self_attn.q_norm.weight"), s.head_dim, 1, 0);
      add(b + "attn_k_norm.weight", L("self_attn.k_norm.weight"), s.head_dim, 1, 0);
    }
    add(b + "ffn_norm.weight", L("post_attention_layernorm.weight"), s.hidden, 1, 0);
    add(b + "ffn_gate.weight", L("mlp.gate_proj.weight"), s.ffn, s.hidden, 0);
    add(b + "ffn_up.weight", L("mlp.up_proj.weight"), s.ffn, s.hidden, 0, l == 0 ? GGMLType::Q8_0 : GGMLType::F32);
    add(b + "ffn_down.weight", L("mlp.down_proj.weight"), s.hidden, s.ffn, 0, l == 0 ? GGMLType::Q4_K : GGMLType::F32);
  }
  add("output_norm.weight", names::final_norm(), s.hidden, 1, 0);
  if (!s.tied) add("output.weight", names::lm_head(), s.vocab, s.hidden, 0);
  return out;
}

std::vector<float> read(const Checkpoint& ck, const std::string& name) {
  std::vector<float> v(static_cast<size_t>(ck.tensors->info(name).numel()));
  ck.tensors->read_f32(name, v.data());
  return v;
}

void expect_all_tensors_equal(const Checkpoint& ck, const Built& b) {
  std::set<std::string> seen;
  for (const auto& t : ck.tensors->tensors()) {
    seen.insert(t.name);
    auto it = b.hf.find(t.name);
    ASSERT_NE(it, b.hf.end()) << "unexpected " << t.name;
    const auto got = read(ck, t.name);
    ASSERT_EQ(got.size(), it->second.size()) << t.name;
    EXPECT_EQ(0, std::memcmp(got.data(), it->second.data(), got.size() * 4)) << t.name;
  }
  EXPECT_EQ(seen.size(), b.hf.size());
}

std::string open_error(const std::string& path) {
  try {
    open_gguf_checkpoint(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

// ---------------------------------------------------------------------------------------------

TEST(GGUFCheckpoint, LlamaNamesShapesConfigAndExactValues) {
  test::ScratchDir dir;
  Synth s;
  Built b = build(s);
  const std::string path = dir / "llama.gguf";
  b.w.write(path);
  Checkpoint ck = open_gguf_checkpoint(path);
  EXPECT_EQ(ck.format, "gguf");
  EXPECT_EQ(ck.path, path);
  const ModelConfig& c = ck.config;
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.family, Family::Llama);
  EXPECT_EQ(c.hidden_size, 256);
  EXPECT_EQ(c.num_hidden_layers, 2);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.intermediate_size, 512);
  EXPECT_EQ(c.vocab_size, 64);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_EQ(c.rms_norm_eps, 1e-5);  // the float32 value read back as the decimal it was written from
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int>{2});
  EXPECT_EQ(c.rope_scaling.type, "none");

  // Exactly the HF tensor set with HF shapes.
  std::map<std::string, std::vector<int64_t>> want;
  for (const auto& [n, shape] : expected_tensors(c)) want[n] = shape;
  const auto infos = ck.tensors->tensors();
  ASSERT_EQ(infos.size(), want.size());
  for (const auto& t : infos) {
    ASSERT_TRUE(want.count(t.name)) << t.name;
    EXPECT_EQ(t.shape, want[t.name]) << t.name;
    EXPECT_EQ(t.file, path);
  }
  EXPECT_EQ(ck.tensors->info(names::layer(0, "self_attn.q_proj.weight")).shape, (std::vector<int64_t>{256, 256}));
  EXPECT_EQ(ck.tensors->info(names::layer(0, "self_attn.k_proj.weight")).shape, (std::vector<int64_t>{128, 256}));
  EXPECT_EQ(ck.tensors->info(names::layer(0, "mlp.down_proj.weight")).shape, (std::vector<int64_t>{256, 512}));
  EXPECT_EQ(ck.tensors->info(names::layer(0, "mlp.up_proj.weight")).dtype, DType::Q8_0);
  EXPECT_EQ(ck.tensors->info(names::layer(0, "mlp.down_proj.weight")).dtype, DType::Q4_K);
  EXPECT_EQ(ck.tensors->info(names::layer(1, "self_attn.k_proj.weight")).dtype, DType::F16);
  EXPECT_EQ(ck.tensors->info(names::embed()).dtype, DType::F32);
  EXPECT_FALSE(ck.tensors->has(names::lm_head()));

  // Every value, q/k included (un-permuted), equals the HF original bit for bit.
  expect_all_tensors_equal(ck, b);
  ck.tensors->release(names::embed());  // a hint only: reading again still works
  EXPECT_EQ(read(ck, names::embed()), b.hf[names::embed()]);
  EXPECT_EQ(ck.config.to_hf_json()["num_key_value_heads"], 2);
}

TEST(GGUFCheckpoint, OpenCheckpointDispatchesOnTheMagic) {
  test::ScratchDir dir;
  Built b = build(Synth{});
  const std::string path = dir / "model.bin";  // the magic decides, not the extension
  b.w.write(path);
  EXPECT_EQ(open_checkpoint(path).format, "gguf");
}

TEST(GGUFCheckpoint, UntiedOutputAndPermutedBiases) {
  test::ScratchDir dir;
  Synth s;
  s.tied = false;
  s.qkv_bias = true;
  Built b = build(s);
  b.w.write(dir / "m.gguf");
  Checkpoint ck = open_gguf_checkpoint(dir / "m.gguf");
  EXPECT_FALSE(ck.config.tie_word_embeddings);
  EXPECT_TRUE(ck.config.attention_bias);
  EXPECT_FALSE(ck.config.o_proj_bias);
  EXPECT_TRUE(ck.tensors->has(names::lm_head()));
  expect_all_tensors_equal(ck, b);
}

TEST(GGUFCheckpoint, Qwen2KeepsRowOrderAndHasBiases) {
  test::ScratchDir dir;
  Synth s;
  s.arch = "qwen2";
  s.qkv_bias = true;
  Built b = build(s);  // build() permutes only for llama, as llama.cpp's converter does
  b.w.write(dir / "q2.gguf");
  Checkpoint ck = open_gguf_checkpoint(dir / "q2.gguf");
  EXPECT_EQ(ck.config.architecture, "Qwen2ForCausalLM");
  EXPECT_EQ(ck.config.family, Family::Qwen2);
  EXPECT_TRUE(ck.config.attention_bias);
  EXPECT_FALSE(ck.config.o_proj_bias);
  expect_all_tensors_equal(ck, b);
}

TEST(GGUFCheckpoint, Qwen3ExplicitHeadDimAndQkNorm) {
  test::ScratchDir dir;
  Synth s;
  s.arch = "qwen3";
  s.head_dim = 128;  // heads * head_dim = 512 != hidden 256
  s.explicit_head_dim = true;
  s.qk_norm = true;
  Built b = build(s);
  b.w.write(dir / "q3.gguf");
  Checkpoint ck = open_gguf_checkpoint(dir / "q3.gguf");
  EXPECT_EQ(ck.config.architecture, "Qwen3ForCausalLM");
  EXPECT_EQ(ck.config.head_dim, 128);
  EXPECT_TRUE(ck.config.qk_norm);
  EXPECT_FALSE(ck.config.attention_bias);
  EXPECT_EQ(ck.tensors->info(names::layer(0, "self_attn.q_proj.weight")).shape, (std::vector<int64_t>{512, 256}));
  EXPECT_EQ(ck.tensors->info(names::layer(0, "self_attn.o_proj.weight")).shape, (std::vector<int64_t>{256, 512}));
  EXPECT_EQ(ck.tensors->info(names::layer(1, "self_attn.k_norm.weight")).shape, (std::vector<int64_t>{128}));
  expect_all_tensors_equal(ck, b);
}

// ---------------------------------------------------------------------------------------------
// The un-permutation proved with RoPE: llama.cpp applies RoPE to adjacent pairs (2i, 2i+1) of the
// stored rows; HF applies it to halves (i, i+d/2) of its rows. If the loader's rows are right, both
// give the same attention scores q(p1)·k(p2) for every head. (Scores are compared rather than
// vectors because they do not depend on the order of dimensions within a head.)

using Vec = std::vector<double>;

void rope_adjacent(double* v, int d, double pos, double theta) {
  for (int i = 0; i < d / 2; ++i) {
    const double a = pos * std::pow(theta, -2.0 * i / d), c = std::cos(a), s = std::sin(a);
    const double x = v[2 * i], y = v[2 * i + 1];
    v[2 * i] = x * c - y * s;
    v[2 * i + 1] = x * s + y * c;
  }
}

void rope_halves(double* v, int d, double pos, double theta) {
  for (int i = 0; i < d / 2; ++i) {
    const double a = pos * std::pow(theta, -2.0 * i / d), c = std::cos(a), s = std::sin(a);
    const double x = v[i], y = v[i + d / 2];
    v[i] = x * c - y * s;
    v[i + d / 2] = x * s + y * c;
  }
}

Vec matvec(const std::vector<float>& w, const Vec& x) {
  const size_t cols = x.size(), rows = w.size() / cols;
  Vec y(rows, 0.0);
  for (size_t r = 0; r < rows; ++r)
    for (size_t c = 0; c < cols; ++c) y[r] += static_cast<double>(w[r * cols + c]) * x[c];
  return y;
}

// Per-head scores of q at p1 against k at p2 (each q head against its kv group's head).
Vec scores(const std::vector<float>& wq, const std::vector<float>& wk, const Vec& x1, const Vec& x2, int heads,
           int kv, int d, double theta, bool adjacent) {
  Vec q = matvec(wq, x1), k = matvec(wk, x2);
  const double p1 = 17, p2 = 5;
  for (int h = 0; h < heads; ++h) (adjacent ? rope_adjacent : rope_halves)(q.data() + h * d, d, p1, theta);
  for (int h = 0; h < kv; ++h) (adjacent ? rope_adjacent : rope_halves)(k.data() + h * d, d, p2, theta);
  Vec out;
  for (int h = 0; h < heads; ++h) {
    const int g = h / (heads / kv);
    double s = 0;
    for (int i = 0; i < d; ++i) s += q[h * d + i] * k[g * d + i];
    out.push_back(s);
  }
  return out;
}

// Compares stored-with-adjacent-RoPE to loaded-with-halves-RoPE for layer `layer` of a file.
void expect_rope_equivalence(const std::string& path, int layer) {
  Checkpoint ck = open_gguf_checkpoint(path);
  const ModelConfig& c = ck.config;
  GGUFFile raw(path);
  auto stored = [&](const std::string& n) {
    const GGUFTensorInfo* t = raw.find_tensor(n);
    std::vector<float> v(static_cast<size_t>(t->numel()));
    raw.read_f32(*t, v.data());
    return v;
  };
  const std::string b = "blk." + std::to_string(layer) + ".";
  const auto wq_s = stored(b + "attn_q.weight"), wk_s = stored(b + "attn_k.weight");
  const auto wq_h = read(ck, names::layer(layer, "self_attn.q_proj.weight"));
  const auto wk_h = read(ck, names::layer(layer, "self_attn.k_proj.weight"));
  std::mt19937 rng(3);
  std::normal_distribution<double> normal;
  Vec x1(c.hidden_size), x2(c.hidden_size);
  for (auto& v : x1) v = normal(rng);
  for (auto& v : x2) v = normal(rng);
  const int H = c.num_attention_heads, K = c.num_key_value_heads, d = c.head_dim;
  const Vec llama_cpp = scores(wq_s, wk_s, x1, x2, H, K, d, c.rope_theta, true);
  const Vec hf = scores(wq_h, wk_h, x1, x2, H, K, d, c.rope_theta, false);
  const Vec wrong = scores(wq_s, wk_s, x1, x2, H, K, d, c.rope_theta, false);  // HF RoPE on stored rows
  double scale = 0, worst_wrong = 0;
  for (double v : llama_cpp) scale = std::max(scale, std::fabs(v));
  for (int h = 0; h < H; ++h) {
    EXPECT_NEAR(hf[h], llama_cpp[h], 1e-9 * scale) << "head " << h;
    worst_wrong = std::max(worst_wrong, std::fabs(wrong[h] - llama_cpp[h]));
  }
  EXPECT_GT(worst_wrong, 1e-3 * scale) << "the check cannot tell the row orders apart";
}

TEST(GGUFCheckpoint, QKUnpermutationMatchesRopeOnSyntheticWeights) {
  test::ScratchDir dir;
  Synth s;
  s.theta = 100000.0f;
  build(s, 77).w.write(dir / "r.gguf");
  expect_rope_equivalence(dir / "r.gguf", 0);
  expect_rope_equivalence(dir / "r.gguf", 1);  // F16 k_proj
}

TEST(GGUFCheckpoint, QKUnpermutationMatchesRopeOnSmolLM2) {
  TOGA_REQUIRE_FILE(test::smollm2_path());
  expect_rope_equivalence(test::smollm2_path(), 0);
  expect_rope_equivalence(test::smollm2_path(), 29);
}

// ---------------------------------------------------------------------------------------------
// RoPE scaling

// llama.cpp's converter writes Llama 3.1 scaling as per-frequency divisors (rope_freqs.weight),
// computed from the HF parameters with inverse frequencies in float32.
std::vector<float> llama3_rope_factors(int dim, float theta, double factor, double low, double high, double old_ctx) {
  std::vector<float> out;
  for (int i = 0; i < dim; i += 2) {
    const float freq = 1.0f / std::pow(theta, static_cast<float>(i) / static_cast<float>(dim));
    const double wavelen = 2 * M_PI / freq;
    if (wavelen < old_ctx / high) out.push_back(1.0f);
    else if (wavelen > old_ctx / low) out.push_back(static_cast<float>(factor));
    else {
      const double smooth = (old_ctx / wavelen - low) / (high - low);
      out.push_back(static_cast<float>(1 / ((1 - smooth) / factor + smooth)));
    }
  }
  return out;
}

TEST(GGUFCheckpoint, Llama3RopeFactorsBecomeRopeScaling) {
  test::ScratchDir dir;
  Synth s;
  s.theta = 500000.0f;
  for (auto [factor, low, high] : {std::tuple{32.0, 1.0, 4.0}, std::tuple{8.0, 1.0, 4.0}, std::tuple{16.0, 2.0, 8.0}}) {
    Built b = build(s);
    const auto rf = llama3_rope_factors(s.head_dim, s.theta, factor, low, high, 8192);
    b.w.add_tensor("rope_freqs.weight", GGMLType::F32, {rf.size()}, f32_bytes(rf));
    b.w.write(dir / "l3.gguf");
    Checkpoint ck = open_gguf_checkpoint(dir / "l3.gguf");
    EXPECT_EQ(ck.config.rope_scaling.type, "llama3");
    EXPECT_DOUBLE_EQ(ck.config.rope_scaling.factor, factor);
    EXPECT_NEAR(ck.config.rope_scaling.low_freq_factor, low, 1e-9);
    EXPECT_NEAR(ck.config.rope_scaling.high_freq_factor, high, 1e-9);
    EXPECT_EQ(ck.config.rope_scaling.original_max_position_embeddings, 8192);
    EXPECT_FALSE(ck.tensors->has("rope_freqs.weight"));  // folded into the config, not a weight
  }
  {  // factors that no llama3 parameters produce
    Built b = build(s);
    auto rf = llama3_rope_factors(s.head_dim, s.theta, 8.0, 1.0, 4.0, 8192);
    rf[1] = 3.0f;  // a high-frequency entry must be 1
    b.w.add_tensor("rope_freqs.weight", GGMLType::F32, {rf.size()}, f32_bytes(rf));
    b.w.write(dir / "bad.gguf");
    EXPECT_NE(open_error(dir / "bad.gguf").find("does not follow llama3 rope scaling"), std::string::npos)
        << open_error(dir / "bad.gguf");
  }
}

TEST(GGUFCheckpoint, RopeScalingMetadata) {
  test::ScratchDir dir;
  Built b = build(Synth{});
  b.w.set_string("llama.rope.scaling.type", "linear");
  b.w.set_float32("llama.rope.scaling.factor", 2.5f);
  b.w.write(dir / "lin.gguf");
  Checkpoint ck = open_gguf_checkpoint(dir / "lin.gguf");
  EXPECT_EQ(ck.config.rope_scaling.type, "linear");
  EXPECT_EQ(ck.config.rope_scaling.factor, 2.5);

  b.w.set_string("llama.rope.scaling.type", "yarn");
  b.w.write(dir / "yarn.gguf");
  EXPECT_NE(open_error(dir / "yarn.gguf").find("unsupported llama.rope.scaling.type 'yarn'"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Errors

TEST(GGUFCheckpointErrors, MissingRequiredKey) {
  test::ScratchDir dir;
  Built b = build(Synth{});
  // Rebuild without llama.block_count: copy everything but that key through a fresh writer.
  const auto bytes = b.w.to_bytes();
  auto f = GGUFFile::parse(bytes.data(), bytes.size(), "mem");
  GGUFWriter w;
  for (const auto& [k, v] : f->metadata())
    if (k != "llama.block_count") w.set(k, v);
  for (const auto& t : f->tensors())
    w.add_tensor(t.name, t.type, t.ne, std::vector<uint8_t>(f->tensor_data(t), f->tensor_data(t) + t.nbytes));
  const std::string path = dir / "nokey.gguf";
  w.write(path);
  EXPECT_EQ(open_error(path), path + ": metadata key 'llama.block_count' missing");
}

TEST(GGUFCheckpointErrors, UnsupportedArchitecture) {
  test::ScratchDir dir;
  Built b = build(Synth{});
  b.w.set_string("general.architecture", "gpt2");
  const std::string path = dir / "gpt2.gguf";
  b.w.write(path);
  EXPECT_EQ(open_error(path),
            path + ": unsupported architecture 'gpt2' in general.architecture (supported: llama, qwen2, qwen3)");
}

TEST(GGUFCheckpointErrors, ShapeAndTensorMismatches) {
  test::ScratchDir dir;
  {
    Built b = build(Synth{});
    b.w.set_uint32("llama.feed_forward_length", 1024);  // tensors are 512 wide
    b.w.write(dir / "ffn.gguf");
    const std::string e = open_error(dir / "ffn.gguf");
    EXPECT_NE(e.find("has shape [512, 256] but the config requires [1024, 256]"), std::string::npos) << e;
  }
  {
    Built b = build(Synth{});
    b.w.set_uint32("llama.block_count", 3);
    b.w.write(dir / "layers.gguf");
    EXPECT_NE(open_error(dir / "layers.gguf").find("missing tensor 'model.layers.2."), std::string::npos);
  }
  {
    Built b = build(Synth{});
    b.w.add_tensor("blk.0.mystery.weight", GGMLType::F32, {4}, std::vector<uint8_t>(16));
    b.w.write(dir / "extra.gguf");
    EXPECT_NE(open_error(dir / "extra.gguf").find("unexpected tensor 'blk.0.mystery.weight'"), std::string::npos);
  }
  {
    Built b = build(Synth{});
    b.w.add_tensor("blk.0.attn_q.bias", GGMLType::Q2_K, {256}, std::vector<uint8_t>(84));
    b.w.write(dir / "q2k.gguf");
    EXPECT_NE(open_error(dir / "q2k.gguf").find("has type Q2_K, which toga cannot decode"), std::string::npos);
  }
  {
    Built b = build(Synth{});
    b.w.set_uint32("llama.rope.dimension_count", 32);
    b.w.write(dir / "partial.gguf");
    EXPECT_NE(open_error(dir / "partial.gguf").find("partial RoPE is not supported"), std::string::npos);
  }
  EXPECT_NE(open_error(dir / "absent.gguf").find("absent.gguf"), std::string::npos);
}

TEST(GGUFNames, MapsToHuggingFaceNames) {
  EXPECT_EQ(gguf_to_hf_name("token_embd.weight"), "model.embed_tokens.weight");
  EXPECT_EQ(gguf_to_hf_name("output_norm.weight"), "model.norm.weight");
  EXPECT_EQ(gguf_to_hf_name("output.weight"), "lm_head.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.12.attn_q.weight"), "model.layers.12.self_attn.q_proj.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.0.attn_k.bias"), "model.layers.0.self_attn.k_proj.bias");
  EXPECT_EQ(gguf_to_hf_name("blk.3.attn_output.weight"), "model.layers.3.self_attn.o_proj.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.3.attn_norm.weight"), "model.layers.3.input_layernorm.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.3.ffn_norm.weight"), "model.layers.3.post_attention_layernorm.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.3.attn_k_norm.weight"), "model.layers.3.self_attn.k_norm.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.3.ffn_down.weight"), "model.layers.3.mlp.down_proj.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.x.ffn_down.weight"), "");
  EXPECT_EQ(gguf_to_hf_name("blk.1.ffn_down"), "");
  EXPECT_EQ(gguf_to_hf_name("rope_freqs.weight"), "");
}

// ---------------------------------------------------------------------------------------------
// The real file

TEST(GGUFSmolLM2, OpensWithTheRightConfigAndFiniteValues) {
  const std::string path = test::smollm2_path();
  TOGA_REQUIRE_FILE(path);
  GGUFFile raw(path);
  EXPECT_EQ(raw.version(), 3u);
  EXPECT_EQ(raw.alignment(), 32u);
  EXPECT_EQ(raw.data_offset(), 1785664u);
  EXPECT_EQ(raw.tensors().size(), 272u);
  EXPECT_EQ(raw.get_string_array("tokenizer.ggml.tokens").size(), 49152u);
  EXPECT_EQ(raw.get_string_array("tokenizer.ggml.merges").size(), 48900u);
  EXPECT_EQ(raw.get_int_array("tokenizer.ggml.token_type").size(), 49152u);
  EXPECT_EQ(raw.get_string("tokenizer.ggml.pre"), "smollm");

  Checkpoint ck = open_gguf_checkpoint(path);
  const ModelConfig& c = ck.config;
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.num_hidden_layers, 30);
  EXPECT_EQ(c.num_attention_heads, 9);
  EXPECT_EQ(c.num_key_value_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.rope_theta, 100000.0);
  EXPECT_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.max_position_embeddings, 8192);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int>{2});
  const auto infos = ck.tensors->tensors();
  EXPECT_EQ(infos.size(), 272u);
  EXPECT_EQ(ck.tensors->info(names::embed()).dtype, DType::Q8_0);
  EXPECT_EQ(ck.tensors->info(names::layer(0, "mlp.down_proj.weight")).dtype, DType::Q4_1);
  EXPECT_EQ(ck.tensors->info(names::layer(0, "mlp.down_proj.weight")).shape, (std::vector<int64_t>{576, 1536}));

  std::vector<float> buf;
  for (const auto& t : infos) {
    buf.resize(static_cast<size_t>(t.numel()));
    ck.tensors->read_f32(t.name, buf.data());
    int64_t bad = 0;
    for (float v : buf) bad += !std::isfinite(v);
    EXPECT_EQ(bad, 0) << t.name;
    ck.tensors->release(t.name);
  }
}

// Reference values from gguf-py 0.19 (llama.cpp's own Python reader: gguf.quants.dequantize, with
// the converter's permutation inverted in numpy), an implementation independent of this one.
TEST(GGUFSmolLM2, ValuesEqualAnIndependentDecoder) {
  const std::string path = test::smollm2_path();
  TOGA_REQUIRE_FILE(path);
  Checkpoint ck = open_gguf_checkpoint(path);
  const auto emb = read(ck, names::embed());
  const auto q = read(ck, names::layer(0, "self_attn.q_proj.weight"));
  const auto k = read(ck, names::layer(29, "self_attn.k_proj.weight"));
  const auto down = read(ck, names::layer(7, "mlp.down_proj.weight"));
  const auto norm = read(ck, names::final_norm());
  auto at = [](const std::vector<float>& w, int64_t cols, int64_t r, int64_t c) { return w[r * cols + c]; };
  EXPECT_EQ(at(emb, 576, 0, 0), -0.106544495f);
  EXPECT_EQ(at(emb, 576, 1, 5), -0.00793457f);
  EXPECT_EQ(at(emb, 576, 49151, 575), -0.04170227f);
  EXPECT_EQ(at(emb, 576, 1234, 321), -0.030441284f);
  EXPECT_EQ(at(q, 576, 0, 0), -0.09631348f);
  EXPECT_EQ(at(q, 576, 1, 0), -0.15917969f);
  EXPECT_EQ(at(q, 576, 32, 0), -0.11730957f);
  EXPECT_EQ(at(q, 576, 33, 7), -0.13195801f);
  EXPECT_EQ(at(q, 576, 100, 200), 0.0021972656f);
  EXPECT_EQ(at(q, 576, 575, 575), -0.25585938f);
  EXPECT_EQ(at(k, 576, 0, 0), 0.062408447f);
  EXPECT_EQ(at(k, 576, 1, 0), 0.05859375f);
  EXPECT_EQ(at(k, 576, 32, 0), 0.0501709f);
  EXPECT_EQ(at(k, 576, 191, 575), 0.0819397f);
  EXPECT_EQ(at(k, 576, 70, 3), -0.14135742f);
  EXPECT_EQ(at(down, 1536, 0, 0), -0.127594f);
  EXPECT_EQ(at(down, 1536, 575, 1535), 0.05706787f);
  EXPECT_EQ(at(down, 1536, 10, 1000), -0.11328125f);
  EXPECT_EQ(norm[0], 1.7578125f);
  EXPECT_EQ(norm[1], 1.8203125f);
  EXPECT_EQ(norm[575], 1.984375f);
  auto sums = [](const std::vector<float>& w) {
    double s = 0, s2 = 0;
    for (float v : w) s += v, s2 += static_cast<double>(v) * v;
    return std::pair{s, s2};
  };
  const std::pair<double, double> want[] = {{-15353.04449415207, 520415.71544763993},
                                            {59.22322082519531, 26749.573275085306},
                                            {87.89241790771484, 1902.811550046259},
                                            {-198.9853515625, 31404.29622159945}};
  const std::vector<float>* got[] = {&emb, &q, &k, &down};
  for (int i = 0; i < 4; ++i) {
    const auto [s, s2] = sums(*got[i]);
    EXPECT_NEAR(s, want[i].first, 1e-9 * want[i].second) << i;
    EXPECT_NEAR(s2, want[i].second, 1e-9 * want[i].second) << i;
  }
}

}  // namespace
}  // namespace toga
