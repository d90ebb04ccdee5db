// Helpers shared by the GGUF tests: a raw little-endian encoder (so tests can write malformed files
// the real writer refuses to produce) and random block bytes with sane fp16 scales.
#pragma once

#include <cstdint>
#include <cstring>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "util/half.h"

namespace toga {
// gtest prints parameters by name rather than as raw bytes.
inline void PrintTo(GGMLType t, std::ostream* os) { *os << ggml_type_name(static_cast<uint32_t>(t)); }
}  // namespace toga

namespace toga::test {

struct RawGGUF {
  std::vector<uint8_t> b;
  template <typename T>
  RawGGUF& put(T v) {
    const size_t at = b.size();
    b.resize(at + sizeof(T));
    std::memcpy(b.data() + at, &v, sizeof(T));
    return *this;
  }
  RawGGUF& str(const std::string& s) {
    put<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  RawGGUF& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    b.insert(b.end(), {'G', 'G', 'U', 'F'});
    put<uint32_t>(version);
    put<uint64_t>(n_tensors);
    return put<uint64_t>(n_kv);
  }
  RawGGUF& kv_u32(const std::string& key, uint32_t v) {
    str(key);
    put<uint32_t>(4);
    return put<uint32_t>(v);
  }
  RawGGUF& kv_str(const std::string& key, const std::string& v) {
    str(key);
    put<uint32_t>(8);
    return str(v);
  }
  RawGGUF& tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    str(name);
    put<uint32_t>(static_cast<uint32_t>(ne.size()));
    for (auto d : ne) put<uint64_t>(d);
    put<uint32_t>(type);
    return put<uint64_t>(offset);
  }
  RawGGUF& pad(size_t alignment) {
    while (b.size() % alignment) b.push_back(0);
    return *this;
  }
  RawGGUF& zeros(size_t n) {
    b.insert(b.end(), n, 0);
    return *this;
  }
};

inline void put_half(uint8_t* p, float v) {
  const uint16_t h = float_to_fp16(v);
  std::memcpy(p, &h, 2);
}

// Offsets of the fp16 fields (scales, mins) inside one block of each block type.
inline std::vector<int> half_fields(GGMLType t) {
  switch (t) {
    case GGMLType::Q8_0: case GGMLType::Q4_0: case GGMLType::Q5_0: return {0};
    case GGMLType::Q4_1: case GGMLType::Q5_1: case GGMLType::Q4_K: case GGMLType::Q5_K: return {0, 2};
    case GGMLType::Q6_K: return {208};
    default: return {};
  }
}

// Random encoded bytes for n elements of type t: random codes, with every fp16 scale/min set to a
// finite value of realistic magnitude (random bits there would give inf/NaN and prove nothing).
inline std::vector<uint8_t> random_tensor_bytes(GGMLType t, int64_t n, std::mt19937& rng) {
  const GGMLTypeTraits tr = ggml_type_traits(t);
  const int64_t nblocks = n / tr.block_elems;
  std::vector<uint8_t> out(static_cast<size_t>(nblocks * tr.block_bytes));
  std::uniform_int_distribution<int> byte(0, 255);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  if (t == GGMLType::F32) {
    for (int64_t i = 0; i < n; ++i) {
      const float v = normal(rng);
      std::memcpy(out.data() + 4 * i, &v, 4);
    }
    return out;
  }
  if (t == GGMLType::F16 || t == GGMLType::BF16) {
    for (int64_t i = 0; i < n; ++i) {
      const float v = normal(rng);
      const uint16_t h = t == GGMLType::F16 ? float_to_fp16(v) : float_to_bf16(v);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
    return out;
  }
  for (auto& x : out) x = static_cast<uint8_t>(byte(rng));
  for (int64_t blk = 0; blk < nblocks; ++blk)
    for (int off : half_fields(t)) put_half(out.data() + blk * tr.block_bytes + off, 0.01f * normal(rng));
  return out;
}

}  // namespace toga::test
