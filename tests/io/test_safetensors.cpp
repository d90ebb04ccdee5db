#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "test_util.h"
#include "util/error.h"

namespace toga {
namespace {

using test::ScratchDir;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// A file built by hand: length prefix, header text as given, then `buffer_bytes` zero bytes.
std::string raw_file(const std::string& header, size_t buffer_bytes) {
  return le64(header.size()) + header + std::string(buffer_bytes, '\0');
}

// Expects opening `bytes` (written to a file) to fail with the path and `phrase` in the message.
void expect_rejected(const ScratchDir& dir, const std::string& name, const std::string& bytes,
                     const std::string& phrase) {
  const std::string path = dir / name;
  write_bytes(path, bytes);
  try {
    SafetensorsFile f(path);
    ADD_FAILURE() << name << ": accepted, expected an error containing '" << phrase << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path + ": "), std::string::npos) << name << ": message lacks the path: " << msg;
    EXPECT_NE(msg.find(phrase), std::string::npos) << name << ": expected '" << phrase << "' in: " << msg;
  }
}

struct OwnedTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

std::vector<OwnedTensor> every_dtype_tensors() {
  std::mt19937 rng(1234);
  std::vector<OwnedTensor> out;
  const DType all[] = {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64,
                       DType::I32, DType::I16, DType::I8,  DType::U8,   DType::BOOL};
  int k = 0;
  for (DType d : all) {
    OwnedTensor t;
    t.name = std::string("t.") + dtype_name(d);
    t.dtype = d;
    t.shape = {3, 1 + k % 4, 5};
    int64_t n = 1;
    for (auto s : t.shape) n *= s;
    t.bytes.resize(static_cast<size_t>(n) * dtype_size(d));
    // Random bytes cover NaN payloads, subnormals and infinities for the float types: the round
    // trip must be bit-exact, not value-equal.
    for (auto& b : t.bytes) b = static_cast<uint8_t>(rng());
    if (d == DType::BOOL)
      for (auto& b : t.bytes) b &= 1;
    out.push_back(std::move(t));
    ++k;
  }
  out.push_back({"scalar", DType::F32, {}, {0, 0, 0x80, 0x3f}});  // 1.0f, rank 0
  out.push_back({"empty", DType::F16, {0, 7}, {}});               // zero elements, zero bytes
  return out;
}

std::vector<TensorToWrite> views(const std::vector<OwnedTensor>& ts) {
  std::vector<TensorToWrite> out;
  for (const auto& t : ts) out.push_back({t.name, t.dtype, t.shape, t.bytes.data()});
  return out;
}

TEST(Safetensors, RoundTripEveryDtypeBitExact) {
  ScratchDir dir;
  const auto ts = every_dtype_tensors();
  const std::string path = dir / "all.safetensors";
  write_safetensors(path, views(ts), {{"format", "pt"}, {"note", "h\u00e9llo"}});

  SafetensorsFile f(path);
  EXPECT_EQ(f.path(), path);
  ASSERT_EQ(f.header().entries.size(), ts.size());
  EXPECT_EQ(f.header().metadata.at("format"), "pt");
  EXPECT_EQ(f.header().metadata.at("note"), "h\u00e9llo");
  for (const auto& t : ts) {
    const SafetensorsEntry& e = f.entry(t.name);
    EXPECT_EQ(e.dtype, t.dtype) << t.name;
    EXPECT_EQ(e.shape, t.shape) << t.name;
    ASSERT_EQ(e.end - e.begin, t.bytes.size()) << t.name;
    if (!t.bytes.empty()) {
      EXPECT_EQ(std::memcmp(f.data(e), t.bytes.data(), t.bytes.size()), 0) << t.name;
    }
  }
  // entries come sorted by offset
  for (size_t i = 1; i < f.header().entries.size(); ++i)
    EXPECT_LE(f.header().entries[i - 1].end, f.header().entries[i].begin);
  EXPECT_THROW(f.entry("absent"), Error);
}

TEST(Safetensors, WrittenBytesFollowTheSpec) {
  ScratchDir dir;
  const auto ts = every_dtype_tensors();
  const std::string path = dir / "spec.safetensors";
  write_safetensors(path, views(ts), {{"format", "pt"}});
  const std::string bytes = read_bytes(path);

  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  ASSERT_LE(8 + n, bytes.size());
  EXPECT_EQ(n % 8, 0u) << "header must be padded to a multiple of 8";
  const std::string header = bytes.substr(8, n);
  EXPECT_EQ(header[0], '{');
  const size_t last = header.find_last_not_of(' ');
  EXPECT_EQ(header[last], '}') << "padding must be spaces only";
  EXPECT_LT(header.size() - last - 1, 8u);
  EXPECT_EQ(header.find('\n'), std::string::npos) << "header should be compact";
  EXPECT_EQ(header.find(": "), std::string::npos) << "header should be compact";

  const auto j = nlohmann::json::parse(header);
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j.at("__metadata__"), (nlohmann::json{{"format", "pt"}}));
  EXPECT_EQ(j.size(), ts.size() + 1);
  // Tensors are laid out back to back in the given order, covering the whole buffer.
  uint64_t offset = 0;
  for (const auto& t : ts) {
    const auto& e = j.at(t.name);
    EXPECT_EQ(e.at("dtype").get<std::string>(), dtype_name(t.dtype));
    EXPECT_EQ(e.at("shape").get<std::vector<int64_t>>(), t.shape);
    const auto off = e.at("data_offsets").get<std::vector<uint64_t>>();
    ASSERT_EQ(off.size(), 2u);
    EXPECT_EQ(off[0], offset) << t.name;
    EXPECT_EQ(off[1], offset + t.bytes.size()) << t.name;
    if (!t.bytes.empty()) {
      EXPECT_EQ(std::memcmp(bytes.data() + 8 + n + off[0], t.bytes.data(), t.bytes.size()), 0) << t.name;
    }
    offset = off[1];
  }
  EXPECT_EQ(8 + n + offset, bytes.size());
}

TEST(Safetensors, HeaderWithoutTensorsIsValid) {
  ScratchDir dir;
  write_safetensors(dir / "empty.safetensors", {});
  SafetensorsFile f(dir / "empty.safetensors");
  EXPECT_TRUE(f.header().entries.empty());
  EXPECT_EQ(f.header().data_start % 8, 0u);
}

TEST(Safetensors, ReadsHandWrittenFileWithPaddingAndUnsortedEntries) {
  ScratchDir dir;
  // Entries listed in reverse offset order, padded with spaces, as another writer might produce.
  std::string h = R"({"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  h.append(5, ' ');
  std::string bytes = le64(h.size()) + h + std::string("\x00\x00\x80\x3f\x07\x09", 6);
  write_bytes(dir / "x.safetensors", bytes);
  SafetensorsFile f(dir / "x.safetensors");
  ASSERT_EQ(f.header().entries.size(), 2u);
  EXPECT_EQ(f.header().entries[0].name, "a");
  float v;
  std::memcpy(&v, f.data(f.entry("a")), 4);
  EXPECT_EQ(v, 1.0f);
  EXPECT_EQ(f.data(f.entry("b"))[1], 9);
}

TEST(Safetensors, RejectsBadFiles) {
  ScratchDir dir;
  const std::string ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";

  expect_rejected(dir, "short", std::string("\x05\x00\x00", 3), "truncated file");
  expect_rejected(dir, "empty", "", "truncated file");
  expect_rejected(dir, "past_end", le64(1000) + "{}", "past end of file");
  expect_rejected(dir, "huge_len", le64(~uint64_t(0)) + "{}", "past end of file");
  {
    std::string b = raw_file(ok, 8);
    expect_rejected(dir, "truncated_data", b.substr(0, b.size() - 3), "out of range");
  }
  expect_rejected(dir, "overlap",
                  raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                           12),
                  "overlapping data_offsets");
  expect_rejected(dir, "same_range",
                  raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})",
                           8),
                  "overlapping data_offsets");
  expect_rejected(dir, "out_of_range", raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 8),
                  "out of range");
  expect_rejected(dir, "wrong_length", raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,12]}})", 12),
                  "needs 8 bytes");
  expect_rejected(dir, "wrong_length_dtype",
                  raw_file(R"({"a":{"dtype":"F16","shape":[2,2],"data_offsets":[0,16]}})", 16), "needs 8 bytes");
  expect_rejected(dir, "end_before_begin",
                  raw_file(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[8,0]}})", 8), "end before begin");
  expect_rejected(dir, "bad_json", raw_file(R"({"a":{"dtype":"F32",)", 0), "not valid JSON");
  expect_rejected(dir, "trailing_garbage", raw_file(ok + "xx", 8), "not valid JSON");
  expect_rejected(dir, "nul_padding", raw_file(ok + std::string(3, '\0'), 8), "not valid JSON");
  expect_rejected(dir, "bad_utf8", raw_file("{\"\xff\xfe\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0),
                  "not valid JSON");
  expect_rejected(dir, "not_object", raw_file("[1,2]", 0), "does not start with '{'");
  expect_rejected(dir, "empty_header", raw_file("", 0), "does not start with '{'");
  expect_rejected(dir, "duplicate",
                  raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                           R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                           8),
                  "duplicate key 'a'");
  expect_rejected(dir, "duplicate_field",
                  raw_file(R"({"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4),
                  "duplicate key 'dtype'");
  expect_rejected(dir, "fp8", raw_file(R"({"a":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}})", 1),
                  "unsupported dtype 'F8_E4M3'");
  expect_rejected(dir, "no_dtype", raw_file(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", 4), "'dtype'");
  expect_rejected(dir, "dtype_not_string", raw_file(R"({"a":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", 4),
                  "'dtype'");
  expect_rejected(dir, "no_shape", raw_file(R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", 4), "'shape'");
  expect_rejected(dir, "negative_dim", raw_file(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4),
                  "negative value -1");
  expect_rejected(dir, "float_dim", raw_file(R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4),
                  "non-negative integers");
  expect_rejected(dir, "overflow_dims",
                  raw_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})", 4),
                  "overflows");
  expect_rejected(dir, "overflow_bytes",
                  raw_file(R"({"a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,4]}})", 4),
                  "overflows");
  expect_rejected(dir, "huge_number",
                  raw_file(R"({"a":{"dtype":"F32","shape":[99999999999999999999999],"data_offsets":[0,4]}})", 4),
                  "non-negative integers");
  expect_rejected(dir, "no_offsets", raw_file(R"({"a":{"dtype":"F32","shape":[1]}})", 4), "data_offsets");
  expect_rejected(dir, "three_offsets",
                  raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", 4), "data_offsets");
  expect_rejected(dir, "entry_not_object", raw_file(R"({"a":[1,2]})", 0), "not a JSON object");
  expect_rejected(dir, "hole",
                  raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                           R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                           12),
                  "hole in the data buffer");
  expect_rejected(dir, "leading_hole", raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
                  "hole in the data buffer");
  expect_rejected(dir, "trailing_bytes", raw_file(ok, 12), "trailing bytes");
  expect_rejected(dir, "metadata_not_object", raw_file(R"({"__metadata__":[1]})", 0), "'__metadata__'");
  expect_rejected(dir, "metadata_not_string", raw_file(R"({"__metadata__":{"k":1}})", 0), "'__metadata__'");
}

TEST(Safetensors, DeeplyNestedHeadersFailCleanly) {
  ScratchDir dir;
  const int depth = 200000;  // deep enough to overflow the stack of any recursive walk
  const std::string deep = std::string(depth, '[') + std::string(depth, ']');
  expect_rejected(dir, "deep_shape",
                  raw_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,)" + deep +
                               R"(],"data_offsets":[0,4]}})",
                           4),
                  "overflows");
  expect_rejected(dir, "deep_dim", raw_file(R"({"a":{"dtype":"F32","shape":[)" + deep + R"(],"data_offsets":[0,4]}})", 4),
                  "got a JSON array");
  expect_rejected(dir, "deep_entry", raw_file(R"({"a":)" + deep + "}", 0), "not a JSON object");
  // Unknown keys in an entry are ignored, however deep.
  const std::string ok = raw_file(R"({"a":{"x":)" + deep + R"(,"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 1);
  write_bytes(dir / "deep_ok", ok);
  EXPECT_EQ(SafetensorsFile(dir / "deep_ok").header().entries.size(), 1u);
}

TEST(Safetensors, RejectsAbsurdHeaderLengthWithoutReadingIt) {
  // A 200 MB header inside a (claimed) 1 GB file: the limit applies before any JSON is parsed.
  const std::string bytes = le64(200'000'000) + "{}";
  try {
    parse_safetensors_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), 1'000'000'000, "big.st");
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("big.st: header length 200000000 exceeds"), std::string::npos) << e.what();
  }
}

TEST(Safetensors, WriterRejectsBadInput) {
  ScratchDir dir;
  float x[2] = {1, 2};
  EXPECT_THROW(write_safetensors(dir / "a", {{"a", DType::F32, {2}, x}, {"a", DType::F32, {2}, x}}), Error);
  EXPECT_THROW(write_safetensors(dir / "b", {{"a", DType::Q4_0, {2}, x}}), Error);
  EXPECT_THROW(write_safetensors(dir / "c", {{"a", DType::F32, {-2}, x}}), Error);
  EXPECT_THROW(write_safetensors(dir / "d", {{"__metadata__", DType::F32, {2}, x}}), Error);
  EXPECT_THROW(write_safetensors(dir / "e", {{"bad\xff", DType::F32, {2}, x}}), Error);
  // Nothing half-written is left behind.
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

}  // namespace
}  // namespace toga
