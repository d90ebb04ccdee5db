#include "runtime/transformer.h"

#include "runtime/attention.h"
#include "runtime/vector_math.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "util/error.h"

namespace toga::rt {

namespace {


// Hugging Face's RMSNorm in float32: x · rsqrt(mean(x²) + eps), then the gain.
void rms_norm(const float* x, const float* gain, int64_t n, double eps, float* out) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += double(x[i]) * double(x[i]);
  const float r = 1.0f / std::sqrt(float(ss / double(n)) + float(eps));
  for (int64_t i = 0; i < n; ++i) out[i] = gain[i] * (x[i] * r);
}

// cos and sin of every angle at position `pos` (the same for every head): cs[0..half), cs[half..d).
void rope_angles(int64_t d, int64_t pos, const std::vector<float>& inv_freq, float* cs) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float angle = float(pos) * inv_freq[size_t(i)];
    cs[i] = std::cos(angle);
    cs[half + i] = std::sin(angle);
  }
}

// Rotate-halves RoPE on one head.
void rope(float* x, int64_t d, const float* cs) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half], c = cs[i], s = cs[half + i];
    x[i] = a * c - b * s;
    x[i + half] = b * c + a * s;
  }
}

// One row's quantization as quant/quantizer.cpp's fake_quantize computes it (float32 step by step):
// codes stored offset to [0, 2^bits), value = scale·(u − zero_offset).
void quantize_row(const float* x, int64_t n, const KvQuant& q, uint8_t* codes, float& scale, float& zero_offset) {
  const int half = 1 << (q.bits - 1);
  const float qmax = float((1 << q.bits) - 1);
  float lo = 0, hi = 0;
  if (q.symmetric) {
    for (int64_t i = 0; i < n; ++i) hi = std::max(hi, std::fabs(x[i]));
    if (!(hi > 0)) hi = 1;
    lo = -hi;
    scale = (hi - lo) * float(q.clip * kSymmetricTieBreak) / qmax;
  } else {
    for (int64_t i = 0; i < n; ++i) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
    if (lo == 0 && hi == 0) lo = -1, hi = 1;
    scale = (hi - lo) * float(q.clip) / qmax;
  }
  const float zero = q.symmetric ? 0.0f : std::nearbyint(-(lo * float(q.clip)) / scale) - float(half);
  zero_offset = zero + float(half);
  for (int64_t i = 0; i < n; ++i) {
    const float c = std::clamp(std::nearbyint(x[i] / scale) + zero, float(-half), float(half - 1));
    const uint8_t u = uint8_t(int(c) + half);
    if (q.bits <= 4) {
      uint8_t& byte = codes[i / 2];
      byte = i % 2 == 0 ? uint8_t((byte & 0xF0) | u) : uint8_t((byte & 0x0F) | (u << 4));
    } else {
      codes[i] = u;
    }
  }
}

void dequantize_row(const uint8_t* codes, int64_t n, int bits, float scale, float zero_offset, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const int u = bits <= 4 ? (i % 2 == 0 ? codes[i / 2] & 0x0F : codes[i / 2] >> 4) : codes[i];
    out[i] = scale * (float(u) - zero_offset);
  }
}

void add_rows(float* x, const float* y, int64_t n, int64_t width, int64_t y_width, const std::vector<int32_t>& index) {
  for (int64_t t = 0; t < n; ++t) {
    float* xr = x + t * width;
    const float* yr = y + t * y_width;
    if (index.empty())
      for (int64_t i = 0; i < width; ++i) xr[i] += yr[i];
    else
      for (int64_t i = 0; i < y_width; ++i) xr[index[size_t(i)]] += yr[i];
  }
}

// Adds the time since the previous mark to one operator of the profile (when there is one).
class OpTimer {
 public:
  explicit OpTimer(OpProfile* p) : p_(p), last_(p ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point()) {}
  void mark(int op) {
    if (!p_) return;
    const auto now = std::chrono::steady_clock::now();
    p_->seconds[op] += std::chrono::duration<double>(now - last_).count();
    last_ = now;
  }

 private:
  OpProfile* p_;
  std::chrono::steady_clock::time_point last_;
};

enum Op { kNorms, kQkv, kRope, kAttention, kOProj, kGateUp, kSwiglu, kDown, kLmHead };

}  // namespace

int64_t Transformer::linear_bytes() const {
  int64_t total = lm_head.weight_bytes();
  for (const auto& b : blocks)
    for (const Linear* l : {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down, &b.qkv, &b.gate_up}) total += l->weight_bytes();
  return total;
}

Session::Session(const Transformer& model, int64_t capacity) : m_(model), capacity_(capacity) {
  if (m_.kv.bits < 16 && (m_.kv.bits < 2 || m_.kv.bits > 8)) fail("runtime KV cache: {} bits (2..8 or 16)", m_.kv.bits);
  row_bytes_ = m_.kv.bits <= 4 ? (m_.head_dim + 1) / 2 : m_.head_dim;
  cache_.resize(m_.blocks.size());
  for (size_t l = 0; l < m_.blocks.size(); ++l) {
    const int64_t rows = m_.blocks[l].kv_heads * capacity;
    LayerCache& c = cache_[l];
    if (m_.kv.bits >= 16) {
      c.k.assign(size_t(rows * m_.head_dim), 0.0f);
      c.v.assign(size_t(rows * m_.head_dim), 0.0f);
    } else {
      c.kc.assign(size_t(rows * row_bytes_), 0);
      c.vc.assign(size_t(rows * row_bytes_), 0);
      for (auto* s : {&c.ks, &c.kz, &c.vs, &c.vz}) s->assign(size_t(rows), 0.0f);
    }
  }
}

int64_t Session::cache_bytes() const {
  int64_t total = 0;
  for (const auto& c : cache_)
    total += int64_t((c.k.size() + c.v.size() + c.ks.size() * 4) * sizeof(float) + c.kc.size() + c.vc.size());
  return total;
}

void Session::store_kv(LayerCache& c, int64_t head, int64_t pos, const float* k, const float* v) const {
  const int64_t row = head * capacity_ + pos, d = m_.head_dim;
  if (m_.kv.bits >= 16) {
    std::memcpy(c.k.data() + row * d, k, size_t(d) * sizeof(float));
    std::memcpy(c.v.data() + row * d, v, size_t(d) * sizeof(float));
  } else {
    quantize_row(k, d, m_.kv, c.kc.data() + row * row_bytes_, c.ks[size_t(row)], c.kz[size_t(row)]);
    quantize_row(v, d, m_.kv, c.vc.data() + row * row_bytes_, c.vs[size_t(row)], c.vz[size_t(row)]);
  }
}

void Session::forward(const int32_t* tokens, int64_t n, float* logits, bool all_logits) {
  if (n <= 0) fail("runtime forward: no tokens");
  if (length_ + n > capacity_) fail("runtime forward: {} + {} tokens exceed the cache's {} positions", length_, n, capacity_);
  const int64_t H = m_.hidden;
  if (profile_) ++profile_->calls;
  OpTimer timer(profile_);
  x_.resize(size_t(n * H));
  for (int64_t t = 0; t < n; ++t) {
    if (tokens[t] < 0 || tokens[t] >= m_.vocab) fail("runtime forward: token id {} outside the vocabulary ({})", tokens[t], m_.vocab);
    std::memcpy(x_.data() + t * H, m_.embed.data() + int64_t(tokens[t]) * H, size_t(H) * sizeof(float));
  }
  timer.mark(kNorms);
  for (int l = 0; l < int(m_.blocks.size()); ++l) block(l, n);
  timer = OpTimer(profile_);
  length_ += n;
  const int64_t first = all_logits ? 0 : n - 1, rows = n - first;
  h_.resize(size_t(rows * H));
  for (int64_t t = 0; t < rows; ++t) rms_norm(x_.data() + (first + t) * H, m_.final_norm.data(), H, m_.rms_eps, h_.data() + t * H);
  timer.mark(kNorms);
  m_.lm_head.forward(h_.data(), rows, H, logits, scratch_);
  timer.mark(kLmHead);
}

void Session::block(int layer, int64_t n) {
  const TransformerBlock& b = m_.blocks[size_t(layer)];
  LayerCache& cache = cache_[size_t(layer)];
  const int64_t H = m_.hidden, d = m_.head_dim, nh = b.heads, nkv = b.kv_heads, groups = nh / nkv, start = length_;
  OpTimer timer(profile_);
  h_.resize(size_t(n * H));
#pragma omp parallel for schedule(static) if (n > 16)
  for (int64_t t = 0; t < n; ++t) rms_norm(x_.data() + t * H, b.attn_norm.data(), H, m_.rms_eps, h_.data() + t * H);
  timer.mark(kNorms);
  q_.resize(size_t(n * nh * d));
  k_.resize(size_t(n * nkv * d));
  v_.resize(size_t(n * nkv * d));
  if (b.qkv.rows > 0) {
    fused_.resize(size_t(n * b.qkv.rows));
    b.qkv.forward(h_.data(), n, H, fused_.data(), scratch_);
    const int64_t qr = nh * d, kr = nkv * d;
    for (int64_t t = 0; t < n; ++t) {
      const float* row = fused_.data() + t * b.qkv.rows;
      std::memcpy(q_.data() + t * qr, row, size_t(qr) * sizeof(float));
      std::memcpy(k_.data() + t * kr, row + qr, size_t(kr) * sizeof(float));
      std::memcpy(v_.data() + t * kr, row + qr + kr, size_t(kr) * sizeof(float));
    }
  } else {
    b.q.forward(h_.data(), n, H, q_.data(), scratch_);
    b.k.forward(h_.data(), n, H, k_.data(), scratch_);
    b.v.forward(h_.data(), n, H, v_.data(), scratch_);
  }
  timer.mark(kQkv);
#pragma omp parallel for schedule(static) if (n > 16)
  for (int64_t t = 0; t < n; ++t) {
    thread_local std::vector<float> cs;
    cs.resize(size_t(d));
    rope_angles(d, start + t, m_.rope_inv_freq, cs.data());
    for (int64_t h = 0; h < nh; ++h) {
      float* q = q_.data() + (t * nh + h) * d;
      if (!b.q_norm.empty()) rms_norm(q, b.q_norm.data(), d, m_.rms_eps, q);
      rope(q, d, cs.data());
    }
    for (int64_t h = 0; h < nkv; ++h) {
      float* k = k_.data() + (t * nkv + h) * d;
      if (!b.k_norm.empty()) rms_norm(k, b.k_norm.data(), d, m_.rms_eps, k);
      rope(k, d, cs.data());
      store_kv(cache, h, start + t, k, v_.data() + (t * nkv + h) * d);
    }
  }

  timer.mark(kRope);

  // Causal grouped-query attention, one (query, head) pair per iteration, over float rows of the
  // cache (an integer cache is dequantized once per call, not once per query).
  const int64_t S = start + n;
  const float* keys = cache.k.data();
  const float* values = cache.v.data();
  int64_t head_stride = capacity_ * d;
  if (m_.kv.bits < 16) {
    kf_.resize(size_t(nkv * S * d));
    vf_.resize(size_t(nkv * S * d));
#pragma omp parallel for schedule(static) if (nkv * S > 256)
    for (int64_t job = 0; job < nkv * S; ++job) {
      const int64_t r = (job / S) * capacity_ + job % S;
      dequantize_row(cache.kc.data() + r * row_bytes_, d, m_.kv.bits, cache.ks[size_t(r)], cache.kz[size_t(r)], kf_.data() + job * d);
      dequantize_row(cache.vc.data() + r * row_bytes_, d, m_.kv.bits, cache.vs[size_t(r)], cache.vz[size_t(r)], vf_.data() + job * d);
    }
    keys = kf_.data();
    values = vf_.data();
    head_stride = S * d;
  }
  attn_.resize(size_t(n * nh * d));
  const float scale = float(1.0 / std::sqrt(double(d)));
  // Prefill: tiles of 16 consecutive positions of one head. A decode step (one position): a tile per
  // KV head holding the query heads that read it (up to 16), so its lanes are not mostly idle.
  const bool by_group = n == 1 && groups <= 16;
  const int64_t tiles = by_group ? nkv : (n + 15) / 16 * nh;
  const Isa isa = m_.lm_head.isa;
#pragma omp parallel for schedule(dynamic, 1) if (tiles > 1)
  for (int64_t job = 0; job < tiles; ++job) {
    AttentionTile a;
    int64_t kvh = 0;
    if (by_group) {
      kvh = job;
      a.q = q_.data() + kvh * groups * d;
      a.q_stride = d;
      a.nq = int(groups);
      a.pos0 = start;
      a.pos_step = 0;
      a.out = attn_.data() + kvh * groups * d;
      a.out_stride = d;
    } else {
      const int64_t h = job % nh, t0 = (job / nh) * 16;
      kvh = h / groups;
      a.q = q_.data() + (t0 * nh + h) * d;
      a.q_stride = nh * d;
      a.nq = int(std::min<int64_t>(16, n - t0));
      a.pos0 = start + t0;
      a.out = attn_.data() + (t0 * nh + h) * d;
      a.out_stride = nh * d;
    }
    a.window = m_.sliding_window;
    a.keys = keys + kvh * head_stride;
    a.values = values + kvh * head_stride;
    a.head_dim = d;
    a.scale = scale;
    thread_local std::vector<float> scores;
    scores.resize(size_t(16 * (start + n)));
    attend(a, scores.data(), isa);
  }
  timer.mark(kAttention);
  o_.resize(size_t(n * b.o.rows));
  b.o.forward(attn_.data(), n, nh * d, o_.data(), scratch_);
  add_rows(x_.data(), o_.data(), n, H, b.o.rows, b.attn_out);
  timer.mark(kOProj);

  // SwiGLU MLP.
#pragma omp parallel for schedule(static) if (n > 16)
  for (int64_t t = 0; t < n; ++t) rms_norm(x_.data() + t * H, b.mlp_norm.data(), H, m_.rms_eps, h_.data() + t * H);
  timer.mark(kNorms);
  const int64_t inner = b.gate.rows;
  gate_.resize(size_t(n * inner));
  up_.resize(size_t(n * inner));
  if (b.gate_up.rows > 0) {
    fused_.resize(size_t(n * 2 * inner));
    b.gate_up.forward(h_.data(), n, H, fused_.data(), scratch_);
    timer.mark(kGateUp);
    silu_mul_rows(fused_.data(), n, inner, gate_.data(), m_.lm_head.isa);
  } else {
    b.gate.forward(h_.data(), n, H, gate_.data(), scratch_);
    b.up.forward(h_.data(), n, H, up_.data(), scratch_);
    timer.mark(kGateUp);
    silu_mul(gate_.data(), up_.data(), n * inner, m_.lm_head.isa);
  }
  timer.mark(kSwiglu);
  o_.resize(size_t(n * b.down.rows));
  b.down.forward(gate_.data(), n, inner, o_.data(), scratch_);
  add_rows(x_.data(), o_.data(), n, H, b.down.rows, b.mlp_out);
  timer.mark(kDown);
}

}  // namespace toga::rt
