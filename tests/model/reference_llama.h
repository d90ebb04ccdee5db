// An independent float64 Llama-family forward written naively (loops per token, head and channel)
// straight from the Hugging Face modeling code's definitions, for checking toga's forward.
#pragma once

#include <cmath>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "io/model_config.h"
#include "io/tensor_source.h"

namespace toga::test {

using Vec = std::vector<double>;

struct ReferenceWeights {
  std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>> t;
  const std::vector<float>& get(const std::string& n) const { return t.at(n).second; }
  bool has(const std::string& n) const { return t.count(n) != 0; }
};

// Random weights for every tensor the config requires (norm gains near 1, biases small).
inline ReferenceWeights random_weights(const ModelConfig& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  ReferenceWeights w;
  for (const auto& [name, shape] : expected_tensors(c)) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    std::vector<float> v(n);
    const bool gain = name.find("norm") != std::string::npos;
    const bool bias = name.size() > 5 && name.substr(name.size() - 5) == ".bias";
    const double fan_in = shape.size() == 2 ? double(shape[1]) : 1.0;
    for (auto& x : v) {
      const float r = normal(rng);
      x = gain ? 1.0f + 0.1f * r : bias ? 0.1f * r : float(r / std::sqrt(fan_in));
    }
    w.t[name] = {shape, std::move(v)};
  }
  return w;
}

inline void fill_source(const ReferenceWeights& w, MemoryTensorSource& src) {
  for (const auto& [name, t] : w.t) src.add(name, t.first, t.second);
}

inline Vec matvec(const std::vector<float>& W, int64_t rows, int64_t cols, const Vec& x, const std::vector<float>* b) {
  Vec y(rows, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    double s = b ? double((*b)[r]) : 0.0;
    for (int64_t c = 0; c < cols; ++c) s += double(W[r * cols + c]) * x[c];
    y[r] = s;
  }
  return y;
}

inline Vec rmsnorm(const Vec& x, const std::vector<float>& g, double eps, int64_t offset = 0, int64_t n = -1) {
  if (n < 0) n = static_cast<int64_t>(x.size());
  double ms = 0;
  for (int64_t i = 0; i < n; ++i) ms += x[offset + i] * x[offset + i];
  ms /= double(n);
  Vec y(n);
  for (int64_t i = 0; i < n; ++i) y[i] = x[offset + i] / std::sqrt(ms + eps) * g[i];
  return y;
}

inline std::vector<double> reference_inv_freq(const ModelConfig& c) {
  std::vector<double> f(c.head_dim / 2);
  for (size_t i = 0; i < f.size(); ++i) f[i] = std::pow(c.rope_theta, -double(2 * i) / double(c.head_dim));
  if (c.rope_scaling.type == "linear") {
    for (auto& x : f) x /= c.rope_scaling.factor;
  } else if (c.rope_scaling.type == "llama3") {
    const auto& s = c.rope_scaling;
    for (auto& x : f) {
      const double wl = 2 * M_PI / x;
      const double lo = s.original_max_position_embeddings / s.low_freq_factor;
      const double hi = s.original_max_position_embeddings / s.high_freq_factor;
      if (wl < hi) continue;                     // high frequency: unchanged
      if (wl > lo) { x /= s.factor; continue; }  // low frequency: scaled
      const double smooth = (s.original_max_position_embeddings / wl - s.low_freq_factor) /
                            (s.high_freq_factor - s.low_freq_factor);
      x = (1 - smooth) * x / s.factor + smooth * x;
    }
  }
  return f;
}

// Logits [T][vocab] for one sequence.
inline std::vector<Vec> reference_forward(const ModelConfig& c, const ReferenceWeights& w, const std::vector<int>& ids) {
  const int64_t T = ids.size(), H = c.hidden_size, nh = c.num_attention_heads, nkv = c.num_key_value_heads,
                d = c.head_dim, F = c.intermediate_size, V = c.vocab_size;
  const auto inv = reference_inv_freq(c);
  std::vector<Vec> x(T, Vec(H));
  const auto& E = w.get(names::embed());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < H; ++i) x[t][i] = E[ids[t] * H + i];
  auto rope = [&](Vec& v, int64_t heads, int64_t pos) {
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < d / 2; ++i) {
        const double a = v[h * d + i], b = v[h * d + i + d / 2], ang = double(pos) * inv[i];
        v[h * d + i] = a * std::cos(ang) - b * std::sin(ang);
        v[h * d + i + d / 2] = b * std::cos(ang) + a * std::sin(ang);
      }
  };
  auto bias = [&](const std::string& n) -> const std::vector<float>* { return w.has(n) ? &w.get(n) : nullptr; };
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    auto L = [&](const char* s) { return names::layer(l, s); };
    std::vector<Vec> q(T), k(T), v(T);
    for (int64_t t = 0; t < T; ++t) {
      const Vec xn = rmsnorm(x[t], w.get(L("input_layernorm.weight")), c.rms_norm_eps);
      q[t] = matvec(w.get(L("self_attn.q_proj.weight")), nh * d, H, xn, bias(L("self_attn.q_proj.bias")));
      k[t] = matvec(w.get(L("self_attn.k_proj.weight")), nkv * d, H, xn, bias(L("self_attn.k_proj.bias")));
      v[t] = matvec(w.get(L("self_attn.v_proj.weight")), nkv * d, H, xn, bias(L("self_attn.v_proj.bias")));
      if (c.qk_norm) {
        for (int64_t h = 0; h < nh; ++h) {
          const Vec n = rmsnorm(q[t], w.get(L("self_attn.q_norm.weight")), c.rms_norm_eps, h * d, d);
          std::copy(n.begin(), n.end(), q[t].begin() + h * d);
        }
        for (int64_t h = 0; h < nkv; ++h) {
          const Vec n = rmsnorm(k[t], w.get(L("self_attn.k_norm.weight")), c.rms_norm_eps, h * d, d);
          std::copy(n.begin(), n.end(), k[t].begin() + h * d);
        }
      }
      rope(q[t], nh, t);
      rope(k[t], nkv, t);
    }
    for (int64_t t = 0; t < T; ++t) {
      Vec attn(nh * d, 0.0);
      for (int64_t h = 0; h < nh; ++h) {
        const int64_t kvh = h / (nh / nkv);
        std::vector<double> s;
        std::vector<int64_t> pos;
        for (int64_t u = 0; u <= t; ++u) {
          if (c.sliding_window > 0 && u <= t - c.sliding_window) continue;
          double dot = 0;
          for (int64_t i = 0; i < d; ++i) dot += q[t][h * d + i] * k[u][kvh * d + i];
          s.push_back(dot / std::sqrt(double(d)));
          pos.push_back(u);
        }
        double mx = -1e300, z = 0;
        for (double e : s) mx = std::max(mx, e);
        for (double& e : s) z += (e = std::exp(e - mx));
        for (size_t j = 0; j < s.size(); ++j)
          for (int64_t i = 0; i < d; ++i) attn[h * d + i] += s[j] / z * v[pos[j]][kvh * d + i];
      }
      const Vec o = matvec(w.get(L("self_attn.o_proj.weight")), H, nh * d, attn, bias(L("self_attn.o_proj.bias")));
      for (int64_t i = 0; i < H; ++i) x[t][i] += o[i];
    }
    for (int64_t t = 0; t < T; ++t) {
      const Vec xn = rmsnorm(x[t], w.get(L("post_attention_layernorm.weight")), c.rms_norm_eps);
      const Vec g = matvec(w.get(L("mlp.gate_proj.weight")), F, H, xn, bias(L("mlp.gate_proj.bias")));
      const Vec u = matvec(w.get(L("mlp.up_proj.weight")), F, H, xn, bias(L("mlp.up_proj.bias")));
      Vec a(F);
      for (int64_t i = 0; i < F; ++i) a[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
      const Vec dn = matvec(w.get(L("mlp.down_proj.weight")), H, F, a, bias(L("mlp.down_proj.bias")));
      for (int64_t i = 0; i < H; ++i) x[t][i] += dn[i];
    }
  }
  const auto& head = c.tie_word_embeddings ? w.get(names::embed()) : w.get(names::lm_head());
  std::vector<Vec> logits(T);
  for (int64_t t = 0; t < T; ++t) logits[t] = matvec(head, V, H, rmsnorm(x[t], w.get(names::final_norm()), c.rms_norm_eps), nullptr);
  return logits;
}

// Small configurations covering every supported layout.
inline ModelConfig tiny_config(Family f) {
  ModelConfig c;
  c.family = f;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.vocab_size = 61;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000;
  switch (f) {
    case Family::Llama: c.architecture = "LlamaForCausalLM"; break;
    case Family::Mistral: c.architecture = "MistralForCausalLM"; c.sliding_window = 5; break;
    case Family::Qwen2: c.architecture = "Qwen2ForCausalLM"; c.attention_bias = true; c.tie_word_embeddings = true; break;
    case Family::Qwen3: c.architecture = "Qwen3ForCausalLM"; c.qk_norm = true; c.head_dim = 16; break;
  }
  return c;
}

}  // namespace toga::test
