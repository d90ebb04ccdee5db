// Dequantization against a float64 reference written here from the block definitions, element by
// element (index arithmetic, not the decoder's loop structure), for every supported type.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "io/gguf.h"
#include "test_gguf_util.h"
#include "util/error.h"

namespace toga {
namespace {

double ref_half(const uint8_t* p) {
  const uint16_t h = static_cast<uint16_t>(p[0] | (p[1] << 8));
  const int sign = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v;
  if (e == 0) v = std::ldexp(m, -24);  // subnormal: m * 2^-14 / 1024
  else if (e == 31) v = m ? std::nan("") : INFINITY;
  else v = std::ldexp(1.0 + m / 1024.0, e - 15);
  return sign ? -v : v;
}

double ref_bf16(const uint8_t* p) {
  const uint16_t h = static_cast<uint16_t>(p[0] | (p[1] << 8));
  const int sign = h >> 15, e = (h >> 7) & 255, m = h & 127;
  double v;
  if (e == 0) v = std::ldexp(m / 128.0, -126);
  else if (e == 255) v = m ? std::nan("") : INFINITY;
  else v = std::ldexp(1.0 + m / 128.0, e - 127);
  return sign ? -v : v;
}

int nibble(const uint8_t* qs, int i, bool high) { return high ? qs[i] >> 4 : qs[i] & 15; }
uint32_t le32(const uint8_t* p) { return p[0] | (p[1] << 8) | (p[2] << 16) | (uint32_t(p[3]) << 24); }

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K super-block, from its 12 bytes:
// j < 4: scale = low 6 bits of byte j, min = low 6 bits of byte j+4.
// j >= 4: the low 4 bits are the low (scale) / high (min) nibble of byte j+4, the top 2 bits are the
// top 2 bits of byte j-4 (scale) / byte j (min).
void ref_scale_min(const uint8_t* s, int j, int& sc, int& mn) {
  if (j < 4) {
    sc = s[j] % 64;
    mn = s[j + 4] % 64;
  } else {
    sc = (s[j + 4] % 16) + 16 * (s[j - 4] / 64);
    mn = (s[j + 4] / 16) + 16 * (s[j] / 64);
  }
}

// Value and magnitude bound (sum of |terms|, for the float-rounding tolerance) of element e.
struct Ref {
  double v, mag;
};

Ref ref_element(GGMLType t, const uint8_t* b, int e) {
  switch (t) {
    case GGMLType::F32: {
      float f;
      std::memcpy(&f, b + 4 * e, 4);
      return {f, std::fabs(f)};
    }
    case GGMLType::F16: return {ref_half(b + 2 * e), 0};
    case GGMLType::BF16: return {ref_bf16(b + 2 * e), 0};
    case GGMLType::Q8_0: {
      const double d = ref_half(b);
      const double q = static_cast<int8_t>(b[2 + e]);
      return {d * q, std::fabs(d * q)};
    }
    case GGMLType::Q4_0: {
      const double d = ref_half(b);
      const int q = nibble(b + 2, e % 16, e >= 16) - 8;
      return {d * q, std::fabs(d * q)};
    }
    case GGMLType::Q4_1: {
      const double d = ref_half(b), m = ref_half(b + 2);
      const int q = nibble(b + 4, e % 16, e >= 16);
      return {d * q + m, std::fabs(d * q) + std::fabs(m)};
    }
    case GGMLType::Q5_0: {
      const double d = ref_half(b);
      const int q = (nibble(b + 6, e % 16, e >= 16) | (((le32(b + 2) >> e) & 1) << 4)) - 16;
      return {d * q, std::fabs(d * q)};
    }
    case GGMLType::Q5_1: {
      const double d = ref_half(b), m = ref_half(b + 2);
      const int q = nibble(b + 8, e % 16, e >= 16) | (((le32(b + 4) >> e) & 1) << 4);
      return {d * q + m, std::fabs(d * q) + std::fabs(m)};
    }
    case GGMLType::Q4_K:
    case GGMLType::Q5_K: {
      const bool five = t == GGMLType::Q5_K;
      const double d = ref_half(b), dmin = ref_half(b + 2);
      const uint8_t* scales = b + 4;
      const uint8_t* qh = b + 16;
      const uint8_t* qs = b + (five ? 48 : 16);
      const int c = e / 64, l = e % 32;
      const bool high = (e % 64) >= 32;
      int q = nibble(qs, 32 * c + l, high);
      if (five) q |= ((qh[l] >> (2 * c + (high ? 1 : 0))) & 1) << 4;
      int sc, mn;
      ref_scale_min(scales, e / 32, sc, mn);
      return {d * sc * q - dmin * mn, std::fabs(d * sc * q) + std::fabs(dmin * mn)};
    }
    case GGMLType::Q6_K: {
      const uint8_t* ql = b;
      const uint8_t* qh = b + 128;
      const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
      const double d = ref_half(b + 208);
      const int n = e / 128, r = e % 128, g = r / 32, l = r % 32;
      const int low4 = nibble(ql, 64 * n + l + 32 * (g & 1), g >= 2);
      const int high2 = (qh[32 * n + l] >> (2 * g)) & 3;
      const int q = (low4 | (high2 << 4)) - 32;
      const double s = sc[8 * n + 2 * g + l / 16];
      return {d * s * q, std::fabs(d * s * q)};
    }
    default:
      ADD_FAILURE() << "no reference for type " << static_cast<int>(t);
      return {0, 0};
  }
}

void expect_matches_reference(GGMLType t, const std::vector<uint8_t>& bytes, int64_t n) {
  const GGMLTypeTraits tr = ggml_type_traits(t);
  std::vector<float> got(static_cast<size_t>(n));
  dequantize(t, bytes.data(), got.data(), n);
  int failures = 0;
  for (int64_t i = 0; i < n && failures < 10; ++i) {
    const uint8_t* block = bytes.data() + (i / tr.block_elems) * tr.block_bytes;
    const int e = static_cast<int>(i % tr.block_elems);
    const Ref r = tr.block_elems == 1 ? ref_element(t, bytes.data(), static_cast<int>(i)) : ref_element(t, block, e);
    if (std::isnan(r.v)) {
      if (!std::isnan(got[i])) ++failures, ADD_FAILURE() << tr.name << " element " << i << ": want NaN, got " << got[i];
      continue;
    }
    // The decoder works in float: a few roundings of terms no bigger than `mag`.
    const double tol = 1e-6 * r.mag;
    if (!(std::fabs(got[i] - r.v) <= tol)) {
      ++failures;
      ADD_FAILURE() << tr.name << " element " << i << ": got " << got[i] << ", reference " << r.v;
    }
  }
}

class Dequant : public ::testing::TestWithParam<GGMLType> {};

TEST_P(Dequant, MatchesFloat64Reference) {
  const GGMLType t = GetParam();
  std::mt19937 rng(1234 + static_cast<int>(t));
  const int64_t n = 256 * 24;  // whole super-blocks for every type
  expect_matches_reference(t, test::random_tensor_bytes(t, n, rng), n);
}

class DequantBlocks : public ::testing::TestWithParam<GGMLType> {};

TEST_P(DequantBlocks, ExtremeCodesAndNegativeScales) {
  // All-zero and all-one code bytes, with large and negative scales: the ends of every code range.
  const GGMLType t = GetParam();
  std::mt19937 rng(99);
  const GGMLTypeTraits tr = ggml_type_traits(t);
  for (uint8_t fill : {uint8_t(0x00), uint8_t(0xff), uint8_t(0x5a)}) {
    std::vector<uint8_t> bytes(static_cast<size_t>(tr.block_bytes * 2), fill);
    for (int blk = 0; blk < 2; ++blk)
      for (int off : test::half_fields(t)) test::put_half(bytes.data() + blk * tr.block_bytes + off, blk ? -3.5f : 60000.0f);
    expect_matches_reference(t, bytes, tr.block_elems * 2);
  }
}

INSTANTIATE_TEST_SUITE_P(GGUF, Dequant,
                         ::testing::Values(GGMLType::F32, GGMLType::F16, GGMLType::BF16, GGMLType::Q8_0,
                                           GGMLType::Q4_0, GGMLType::Q4_1, GGMLType::Q5_0, GGMLType::Q5_1,
                                           GGMLType::Q4_K, GGMLType::Q5_K, GGMLType::Q6_K),
                         [](const auto& info) { return std::string(ggml_type_traits(info.param).name); });
INSTANTIATE_TEST_SUITE_P(GGUF, DequantBlocks,
                         ::testing::Values(GGMLType::Q8_0, GGMLType::Q4_0, GGMLType::Q4_1, GGMLType::Q5_0,
                                           GGMLType::Q5_1, GGMLType::Q4_K, GGMLType::Q5_K, GGMLType::Q6_K),
                         [](const auto& info) { return std::string(ggml_type_traits(info.param).name); });

TEST(DequantHalf, EveryF16AndBF16BitPattern) {
  std::vector<uint8_t> bytes(65536 * 2);
  for (uint32_t i = 0; i < 65536; ++i) {
    bytes[2 * i] = static_cast<uint8_t>(i & 255);
    bytes[2 * i + 1] = static_cast<uint8_t>(i >> 8);
  }
  for (GGMLType t : {GGMLType::F16, GGMLType::BF16}) {
    std::vector<float> got(65536);
    dequantize(t, bytes.data(), got.data(), 65536);
    int bad = 0;
    for (uint32_t i = 0; i < 65536 && bad < 5; ++i) {
      const double want = t == GGMLType::F16 ? ref_half(&bytes[2 * i]) : ref_bf16(&bytes[2 * i]);
      const bool ok = std::isnan(want) ? std::isnan(got[i]) : static_cast<double>(got[i]) == want;
      if (!ok) ++bad, ADD_FAILURE() << ggml_type_traits(t).name << " pattern " << i << ": got " << got[i] << " want " << want;
    }
  }
}

TEST(DequantParallel, LargeTensorEqualsBlockByBlock) {
  // Above the size where decoding fans out over threads; must equal the single-block decode.
  std::mt19937 rng(5);
  for (GGMLType t : {GGMLType::Q4_K, GGMLType::Q4_1}) {
    const int64_t n = int64_t(1) << 22;
    const auto bytes = test::random_tensor_bytes(t, n, rng);
    std::vector<float> all(static_cast<size_t>(n)), one(static_cast<size_t>(n));
    dequantize(t, bytes.data(), all.data(), n);
    const GGMLTypeTraits tr = ggml_type_traits(t);
    for (int64_t b = 0; b < n / tr.block_elems; ++b)
      dequantize(t, bytes.data() + b * tr.block_bytes, one.data() + b * tr.block_elems, tr.block_elems);
    EXPECT_EQ(0, std::memcmp(all.data(), one.data(), all.size() * 4)) << tr.name;
  }
}

TEST(DequantErrors, BadCountsAndTypes) {
  std::vector<uint8_t> bytes(1024);
  std::vector<float> out(1024);
  EXPECT_THROW(dequantize(GGMLType::Q4_0, bytes.data(), out.data(), 31), Error);
  EXPECT_THROW(dequantize(GGMLType::Q4_K, bytes.data(), out.data(), 32), Error);
  try {
    dequantize(GGMLType::Q2_K, bytes.data(), out.data(), 256);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Q2_K"), std::string::npos) << e.what();
  }
  EXPECT_THROW(dequantize(static_cast<GGMLType>(99), bytes.data(), out.data(), 1), Error);
  EXPECT_TRUE(ggml_type_supported(12));
  EXPECT_FALSE(ggml_type_supported(10));
  EXPECT_FALSE(ggml_type_supported(99));
  EXPECT_EQ(ggml_type_traits(GGMLType::Q6_K).block_bytes, 210);
  EXPECT_EQ(ggml_type_traits(GGMLType::Q5_K).block_bytes, 176);
  EXPECT_EQ(ggml_type_traits(GGMLType::Q4_K).block_bytes, 144);
  EXPECT_EQ(ggml_type_name(99), "type 99");
  EXPECT_THROW(ggml_type_traits(static_cast<GGMLType>(99)), Error);
}

}  // namespace
}  // namespace toga
