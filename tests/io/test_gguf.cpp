// GGUF container: write/read round trips of every metadata and tensor type, and rejection of
// malformed input with an error naming the input and the problem.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <limits>

#include "io/gguf.h"
#include "test_util.h"
#include "test_gguf_util.h"
#include "util/error.h"

namespace toga {
namespace {

using test::RawGGUF;

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

const std::vector<GGMLType> kTensorTypes = {GGMLType::F32,  GGMLType::F16,  GGMLType::BF16, GGMLType::Q8_0,
                                            GGMLType::Q4_0, GGMLType::Q4_1, GGMLType::Q5_0, GGMLType::Q5_1,
                                            GGMLType::Q4_K, GGMLType::Q5_K, GGMLType::Q6_K};

GGUFValue i32(int64_t v) { return GGUFValue::make_int(GGUFType::INT32, v); }

// Fills a writer with one key of every value type, arrays (flat, nested, empty) and one tensor of
// every supported type.
GGUFWriter full_writer(std::mt19937& rng, std::vector<std::vector<uint8_t>>& tensor_bytes) {
  GGUFWriter w;
  w.set_string("general.architecture", "llama");
  w.set("t.u8", GGUFValue::make_uint(GGUFType::UINT8, 255));
  w.set("t.i8", GGUFValue::make_int(GGUFType::INT8, -128));
  w.set("t.u16", GGUFValue::make_uint(GGUFType::UINT16, 65535));
  w.set("t.i16", GGUFValue::make_int(GGUFType::INT16, -32768));
  w.set_uint32("t.u32", 4000000000u);
  w.set_int32("t.i32", -2000000000);
  w.set_uint64("t.u64", 1ull << 63);
  w.set("t.i64", GGUFValue::make_int(GGUFType::INT64, std::numeric_limits<int64_t>::min()));
  w.set_float32("t.f32", 1e-5f);
  w.set("t.f64", GGUFValue::make_float(GGUFType::FLOAT64, 0.1));
  w.set_bool("t.true", true);
  w.set_bool("t.false", false);
  w.set_string("t.empty_string", "");
  w.set_string("t.utf8", "héllo \xe2\x80\x94 <|im_start|>\n\t\"q\"");
  w.set_string_array("t.strings", {"a", "", "Ġthe", std::string("nul\0byte", 8)});
  w.set_int32_array("t.ints", {3, -1, 0, 2147483647});
  w.set_float32_array("t.floats", {0.5f, -0.25f, 1e30f});
  w.set("t.empty_array", GGUFValue::make_array(GGUFType::UINT8, {}));
  w.set("t.nested", GGUFValue::make_array(GGUFType::ARRAY, {GGUFValue::make_array(GGUFType::INT32, {i32(1), i32(2)}),
                                                            GGUFValue::make_array(GGUFType::INT32, {}),
                                                            GGUFValue::make_array(GGUFType::INT32, {i32(-7)})}));
  w.set("t.nested_strings",
        GGUFValue::make_array(GGUFType::ARRAY, {GGUFValue::make_array(GGUFType::STRING, {GGUFValue::make_string("x")})}));
  int i = 0;
  for (GGMLType t : kTensorTypes) {
    const int64_t be = ggml_type_traits(t).block_elems;
    // Varying shapes, including 1-D and 3-D; ne[0] a multiple of the block size.
    std::vector<uint64_t> ne;
    if (i % 3 == 0) ne = {static_cast<uint64_t>(be == 1 ? 7 : be)};
    else if (i % 3 == 1) ne = {static_cast<uint64_t>(be * 2), 3};
    else ne = {static_cast<uint64_t>(be), 2, 2};
    int64_t n = 1;
    for (auto d : ne) n *= static_cast<int64_t>(d);
    tensor_bytes.push_back(test::random_tensor_bytes(t, n, rng));
    w.add_tensor(std::string("tensor.") + ggml_type_traits(t).name, t, ne, tensor_bytes.back());
    ++i;
  }
  return w;
}

void expect_full_metadata(const GGUFFile& f) {
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("t.u8"), 255);
  EXPECT_EQ(f.get("t.u8").type, GGUFType::UINT8);
  EXPECT_EQ(f.get_int("t.i8"), -128);
  EXPECT_EQ(f.get_int("t.u16"), 65535);
  EXPECT_EQ(f.get_int("t.i16"), -32768);
  EXPECT_EQ(f.get_int("t.u32"), 4000000000ll);
  EXPECT_EQ(f.get_int("t.i32"), -2000000000);
  EXPECT_EQ(std::get<uint64_t>(f.get("t.u64").value), 1ull << 63);
  EXPECT_EQ(f.get_int("t.i64"), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(f.get_float("t.f32"), static_cast<double>(1e-5f));
  EXPECT_EQ(f.get_float("t.f64"), 0.1);
  EXPECT_TRUE(f.get_bool("t.true"));
  EXPECT_FALSE(f.get_bool("t.false"));
  EXPECT_EQ(f.get_string("t.empty_string"), "");
  EXPECT_EQ(f.get_string("t.utf8"), "héllo \xe2\x80\x94 <|im_start|>\n\t\"q\"");
  EXPECT_EQ(f.get_string_array("t.strings"), (std::vector<std::string>{"a", "", "Ġthe", std::string("nul\0byte", 8)}));
  EXPECT_EQ(f.get_int_array("t.ints"), (std::vector<int64_t>{3, -1, 0, 2147483647}));
  EXPECT_EQ(f.get_float_array("t.floats"), (std::vector<double>{0.5, -0.25, static_cast<double>(1e30f)}));
  EXPECT_TRUE(f.get_int_array("t.empty_array").empty());
  const GGUFValue& nested = f.get("t.nested");
  ASSERT_TRUE(nested.is_array());
  EXPECT_EQ(nested.array_type, GGUFType::ARRAY);
  const auto& outer = std::get<std::vector<GGUFValue>>(nested.value);
  ASSERT_EQ(outer.size(), 3u);
  EXPECT_EQ(outer[0].array_type, GGUFType::INT32);
  const auto& first = std::get<std::vector<GGUFValue>>(outer[0].value);
  ASSERT_EQ(first.size(), 2u);
  EXPECT_EQ(std::get<int64_t>(first[1].value), 2);
  EXPECT_TRUE(std::get<std::vector<GGUFValue>>(outer[1].value).empty());
  EXPECT_EQ(std::get<int64_t>(std::get<std::vector<GGUFValue>>(outer[2].value)[0].value), -7);
  EXPECT_EQ(gguf_value_type_name(nested), "array[array[int32]]");
  const auto& ns = std::get<std::vector<GGUFValue>>(f.get("t.nested_strings").value);
  EXPECT_EQ(std::get<std::string>(std::get<std::vector<GGUFValue>>(ns[0].value)[0].value), "x");
}

class GGUFAlignment : public ::testing::TestWithParam<uint32_t> {};

TEST_P(GGUFAlignment, RoundTripsEveryValueAndTensorType) {
  const uint32_t alignment = GetParam();
  test::ScratchDir dir;
  std::mt19937 rng(42 + alignment);
  std::vector<std::vector<uint8_t>> bytes;
  GGUFWriter w = full_writer(rng, bytes);
  if (alignment != 32) w.set_alignment(alignment);
  const std::string path = dir / "all.gguf";
  w.write(path);
  EXPECT_EQ(read_bytes(path), w.to_bytes());  // streamed write == in-memory encoding

  GGUFFile f(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), alignment);
  EXPECT_EQ(f.data_offset() % alignment, 0u);
  EXPECT_EQ(f.path(), path);
  expect_full_metadata(f);
  ASSERT_EQ(f.tensors().size(), kTensorTypes.size());
  for (size_t i = 0; i < kTensorTypes.size(); ++i) {
    const GGUFTensorInfo& t = f.tensors()[i];
    EXPECT_EQ(t.type, kTensorTypes[i]);
    EXPECT_EQ(t.name, std::string("tensor.") + ggml_type_traits(kTensorTypes[i]).name);
    EXPECT_EQ(t.offset % alignment, 0u) << t.name;
    ASSERT_EQ(t.nbytes, bytes[i].size()) << t.name;
    EXPECT_EQ(std::memcmp(f.tensor_data(t), bytes[i].data(), bytes[i].size()), 0) << t.name;
    EXPECT_EQ(f.find_tensor(t.name), &t);
    std::vector<float> got(static_cast<size_t>(t.numel())), want(got.size());
    f.read_f32(t, got.data());
    dequantize(t.type, bytes[i].data(), want.data(), t.numel());
    EXPECT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * 4)) << t.name;
  }
  EXPECT_EQ(f.find_tensor("nope"), nullptr);

  // The same bytes parse from memory too (the fuzzer's path).
  const std::vector<uint8_t> mem = w.to_bytes();
  auto g = GGUFFile::parse(mem.data(), mem.size(), "<memory>");
  EXPECT_EQ(g->path(), "<memory>");
  expect_full_metadata(*g);
  EXPECT_EQ(g->tensors().size(), kTensorTypes.size());
}

INSTANTIATE_TEST_SUITE_P(GGUF, GGUFAlignment, ::testing::Values(32u, 64u, 1u, 256u));

TEST(GGUF, Version2IsAccepted) {
  GGUFWriter w;
  w.set_string("general.architecture", "llama");
  w.add_tensor("x", GGMLType::F32, {4}, std::vector<uint8_t>(16, 0));
  std::vector<uint8_t> b = w.to_bytes();
  b[4] = 2;  // v2 differs from v3 only in allowing no big-endian files
  auto f = GGUFFile::parse(b.data(), b.size(), "v2.gguf");
  EXPECT_EQ(f->version(), 2u);
  EXPECT_EQ(f->tensors().size(), 1u);
}

TEST(GGUF, NoTensorsNoDataSection) {
  RawGGUF r;
  r.header(0, 1).kv_str("general.architecture", "llama");  // ends right after the metadata
  auto f = GGUFFile::parse(r.b.data(), r.b.size(), "vocab-only.gguf");
  EXPECT_TRUE(f->tensors().empty());
}

TEST(GGUF, WriterReplacesKeysAndRejectsBadTensors) {
  GGUFWriter w;
  w.set_uint32("a", 1);
  w.set_uint32("a", 2);
  EXPECT_THROW(w.add_tensor("t", GGMLType::Q4_0, {31}, std::vector<uint8_t>(18)), Error);  // not a block multiple
  EXPECT_THROW(w.add_tensor("t", GGMLType::Q4_0, {32}, std::vector<uint8_t>(17)), Error);  // wrong byte count
  w.add_tensor("t", GGMLType::Q4_0, {32}, std::vector<uint8_t>(18));
  EXPECT_THROW(w.add_tensor("t", GGMLType::Q4_0, {32}, std::vector<uint8_t>(18)), Error);  // duplicate
  EXPECT_THROW(w.set_alignment(48), Error);
  const auto b = w.to_bytes();
  auto f = GGUFFile::parse(b.data(), b.size(), "w");
  EXPECT_EQ(f->get_int("a"), 2);
  EXPECT_EQ(f->metadata().size(), 1u);
}

TEST(GGUF, GetterErrorsNameFileKeyAndTypes) {
  GGUFWriter w;
  w.set_string("s", "x");
  w.set_int32_array("ints", {1});
  w.set_uint64("huge", ~0ull);
  const auto b = w.to_bytes();
  auto f = GGUFFile::parse(b.data(), b.size(), "model.gguf");
  auto message = [&](auto fn) {
    try {
      fn();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message([&] { f->get_int("missing.key"); }), "model.gguf: metadata key 'missing.key' missing");
  EXPECT_EQ(message([&] { f->get_int("s"); }), "model.gguf: metadata key 's' has type string, expected an integer");
  EXPECT_EQ(message([&] { f->get_string("ints"); }),
            "model.gguf: metadata key 'ints' has type array[int32], expected string");
  EXPECT_EQ(message([&] { f->get_string_array("ints"); }),
            "model.gguf: metadata key 'ints' has type array[int32], expected array[string]");
  EXPECT_EQ(message([&] { f->get_bool("s"); }), "model.gguf: metadata key 's' has type string, expected bool");
  EXPECT_EQ(message([&] { f->get_float_array("s"); }),
            "model.gguf: metadata key 's' has type string, expected an array of numbers");
  EXPECT_NE(message([&] { f->get_int("huge"); }).find("does not fit int64"), std::string::npos);
  EXPECT_EQ(f->get_float("huge"), 18446744073709551616.0);
  EXPECT_EQ(f->get_float_array("ints"), std::vector<double>{1.0});
}

TEST(GGUF, MetadataJson) {
  GGUFWriter w;
  w.set_string("general.architecture", "llama");
  std::vector<std::string> many(100, "tok");
  w.set_string_array("tokens", many);
  w.add_tensor("x", GGMLType::F32, {4, 2}, std::vector<uint8_t>(32, 0));
  const auto b = w.to_bytes();
  auto f = GGUFFile::parse(b.data(), b.size(), "j");
  const auto j = f->to_json(4);
  EXPECT_EQ(j["metadata"]["general.architecture"], "llama");
  EXPECT_EQ(j["metadata"]["tokens"]["length"], 100);
  EXPECT_EQ(j["metadata"]["tokens"]["first"].size(), 4u);
  EXPECT_EQ(j["tensors"][0]["name"], "x");
  EXPECT_EQ(j["tensors"][0]["type"], "F32");
  EXPECT_EQ(j["tensors"][0]["ne"], nlohmann::json({4, 2}));
}

TEST(GGUF, MetadataJsonDumpsInvalidUtf8) {
  // Found by fuzz_gguf: file strings are bytes, and an invalid UTF-8 string made dump() throw.
  GGUFWriter w;
  w.set_string("bad\xff", std::string("a\xff\xc3(\xed\xa0\x80z\xc3\xa9", 10));
  w.set_string_array("arr", {std::string("\xf0\x9f\x98", 3)});
  const auto b = w.to_bytes();
  auto f = GGUFFile::parse(b.data(), b.size(), "u");
  const std::string dumped = f->to_json().dump();
  EXPECT_NE(dumped.find(R"("bad\\xff")"), std::string::npos) << dumped;
  EXPECT_NE(dumped.find(R"(a\\xff\\xc3(\\xed\\xa0\\x80zé)"), std::string::npos) << dumped;
  EXPECT_NE(dumped.find(R"(\\xf0\\x9f\\x98)"), std::string::npos) << dumped;
}

// ---------------------------------------------------------------------------------------------
// Malformed input

std::string parse_error(const std::vector<uint8_t>& b, const std::string& where = "bad.gguf") {
  try {
    GGUFFile::parse(b.data(), b.size(), where);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

#define EXPECT_PARSE_ERROR(bytes, needle)                                              \
  do {                                                                                 \
    const std::string msg_ = parse_error(bytes);                                       \
    EXPECT_EQ(msg_.rfind("bad.gguf: ", 0), 0u) << msg_;                                \
    EXPECT_NE(msg_.find(needle), std::string::npos) << "message: " << msg_;            \
  } while (0)

std::vector<uint8_t> one_tensor_file(uint32_t type = 0, uint64_t offset = 0, std::vector<uint64_t> ne = {8}) {
  RawGGUF r;
  r.header(1, 1).kv_str("general.architecture", "llama").tensor("w", ne, type, offset).pad(32).zeros(64);
  return r.b;
}

TEST(GGUFBadInput, WrongMagic) {
  auto b = one_tensor_file();
  b[0] = 'g';
  EXPECT_PARSE_ERROR(b, "not a GGUF file");
  EXPECT_PARSE_ERROR(std::vector<uint8_t>{}, "too short");
}

TEST(GGUFBadInput, UnknownVersions) {
  for (uint32_t v : {0u, 1u, 4u, 0x03000000u}) {
    auto b = one_tensor_file();
    std::memcpy(b.data() + 4, &v, 4);
    EXPECT_PARSE_ERROR(b, v == 1 ? "version 1 is not supported" : v == 0x03000000u ? "big-endian" : "unsupported GGUF version");
  }
}

TEST(GGUFBadInput, EveryTruncationIsAnErrorNotACrash) {
  std::mt19937 rng(7);
  std::vector<std::vector<uint8_t>> tb;
  const auto full = full_writer(rng, tb).to_bytes();
  auto ok = GGUFFile::parse(full.data(), full.size(), "ok");
  ASSERT_EQ(ok->tensors().size(), kTensorTypes.size());
  for (size_t n = 0; n < full.size(); ++n) {
    std::vector<uint8_t> cut(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));
    const std::string msg = parse_error(cut);
    ASSERT_EQ(msg.rfind("bad.gguf: ", 0), 0u) << "prefix " << n << ": " << msg;
  }
  EXPECT_PARSE_ERROR(std::vector<uint8_t>(full.begin(), full.begin() + 12), "truncated");
}

TEST(GGUFBadInput, StringLengthPastEnd) {
  RawGGUF r;
  r.header(0, 1).put<uint64_t>(1ull << 40);  // key length
  r.zeros(16);
  EXPECT_PARSE_ERROR(r.b, "past the end");
  RawGGUF v;
  v.header(0, 1).str("k").put<uint32_t>(8).put<uint64_t>(~0ull).zeros(8);  // string value
  EXPECT_PARSE_ERROR(v.b, "past the end");
}

TEST(GGUFBadInput, ArrayLengthPastEnd) {
  for (uint32_t elem : {0u, 8u, 9u, 10u}) {
    RawGGUF r;
    r.header(0, 1).str("arr").put<uint32_t>(9).put<uint32_t>(elem).put<uint64_t>(1ull << 61).zeros(64);
    EXPECT_PARSE_ERROR(r.b, "past the end");
  }
}

TEST(GGUFBadInput, ArraysNestedTooDeep) {
  RawGGUF r;
  r.header(0, 1).str("deep").put<uint32_t>(9);
  for (int i = 0; i < 100; ++i) r.put<uint32_t>(9).put<uint64_t>(1);
  r.put<uint32_t>(4).put<uint64_t>(0);
  EXPECT_PARSE_ERROR(r.b, "nested deeper");
}

TEST(GGUFBadInput, UnknownValueTypesAndBadBool) {
  RawGGUF r;
  r.header(0, 1).str("k").put<uint32_t>(13).zeros(16);
  EXPECT_PARSE_ERROR(r.b, "unknown value type 13");
  RawGGUF a;
  a.header(0, 1).str("k").put<uint32_t>(9).put<uint32_t>(77).put<uint64_t>(0);
  EXPECT_PARSE_ERROR(a.b, "unknown element type 77");
  RawGGUF b;
  b.header(0, 1).str("flag").put<uint32_t>(7).put<uint8_t>(2);
  EXPECT_PARSE_ERROR(b.b, "must be 0 or 1");
}

TEST(GGUFBadInput, CountsThatCannotFit) {
  RawGGUF r;
  r.header(~0ull, 0).zeros(64);
  EXPECT_PARSE_ERROR(r.b, "tensor count");
  RawGGUF k;
  k.header(0, 1ull << 62).zeros(64);
  EXPECT_PARSE_ERROR(k.b, "metadata count");
}

TEST(GGUFBadInput, DimensionsOverflow) {
  EXPECT_PARSE_ERROR(one_tensor_file(0, 0, {1ull << 32, 1ull << 32}), "overflows int64");
  EXPECT_PARSE_ERROR(one_tensor_file(0, 0, {1ull << 63}), "overflows int64");
  EXPECT_PARSE_ERROR(one_tensor_file(0, 0, {8, 0}), "zero dimension");
  EXPECT_PARSE_ERROR(one_tensor_file(0, 0, {1, 1, 1, 1, 1}), "5 dimensions");
  EXPECT_PARSE_ERROR(one_tensor_file(2, 0, {48}), "not a multiple of its block size 32");
  // Element count fits int64, byte count would not.
  EXPECT_PARSE_ERROR(one_tensor_file(0, 0, {1ull << 62}), "byte size overflows");
}

TEST(GGUFBadInput, TensorDataOutOfRange) {
  EXPECT_PARSE_ERROR(one_tensor_file(0, 64), "outside the data section");     // 32 bytes at 64 of 64
  EXPECT_PARSE_ERROR(one_tensor_file(0, 0, {17}), "outside the data section");  // 68 bytes of 64
  EXPECT_PARSE_ERROR(one_tensor_file(0, ~0ull & ~31ull), "outside the data section");
  auto ok = one_tensor_file(0, 32);  // exactly fits
  EXPECT_EQ(parse_error(ok), "no error");
}

TEST(GGUFBadInput, OverlappingTensorData) {
  RawGGUF r;
  r.header(2, 0).tensor("a", {16}, 0, 0).tensor("b", {8}, 0, 32).pad(32).zeros(128);
  EXPECT_PARSE_ERROR(r.b, "overlaps");
  RawGGUF same;
  same.header(2, 0).tensor("a", {8}, 0, 0).tensor("b", {8}, 0, 0).pad(32).zeros(64);
  EXPECT_PARSE_ERROR(same.b, "overlaps");
}

TEST(GGUFBadInput, MisalignedDataOffset) {
  EXPECT_PARSE_ERROR(one_tensor_file(0, 4), "not a multiple of the alignment 32");
  RawGGUF r;  // with a declared alignment of 64, offset 32 is misaligned
  r.header(1, 1).kv_u32("general.alignment", 64).tensor("w", {8}, 0, 32).pad(64).zeros(128);
  EXPECT_PARSE_ERROR(r.b, "not a multiple of the alignment 64");
}

TEST(GGUFBadInput, BadAlignmentValues) {
  for (uint32_t a : {0u, 3u, 48u}) {
    RawGGUF r;
    r.header(0, 1).kv_u32("general.alignment", a);
    EXPECT_PARSE_ERROR(r.b, "not a positive power of two");
  }
  RawGGUF s;
  s.header(0, 1).kv_str("general.alignment", "32");
  EXPECT_PARSE_ERROR(s.b, "general.alignment' has type string");
}

TEST(GGUFBadInput, UnknownTensorType) {
  EXPECT_PARSE_ERROR(one_tensor_file(99), "unknown ggml type 99");
  EXPECT_PARSE_ERROR(one_tensor_file(4), "unknown ggml type 4");  // removed Q4_2
}

TEST(GGUFBadInput, DuplicateKeysAndTensorNames) {
  RawGGUF r;
  r.header(0, 2).kv_u32("a", 1).kv_u32("a", 2);
  EXPECT_PARSE_ERROR(r.b, "duplicate metadata key 'a'");
  RawGGUF t;
  t.header(2, 0).tensor("w", {8}, 0, 0).tensor("w", {8}, 0, 32).pad(32).zeros(64);
  EXPECT_PARSE_ERROR(t.b, "duplicate tensor name 'w'");
}

TEST(GGUFBadInput, UndecodableTypeParsesButReadFails) {
  // Q2_K's layout is known, so the file (and its tokenizer) is readable; decoding it is an error.
  RawGGUF r;
  r.header(1, 0).tensor("w", {256}, 10, 0).pad(32).zeros(84);
  auto f = GGUFFile::parse(r.b.data(), r.b.size(), "q2k.gguf");
  std::vector<float> out(256);
  try {
    f->read_f32(f->tensors()[0], out.data());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("q2k.gguf: tensor 'w' has type Q2_K, which toga cannot decode"),
              std::string::npos)
        << e.what();
  }
}

TEST(GGUFBadInput, FileErrorsNameThePath) {
  test::ScratchDir dir;
  const std::string path = dir / "bad.gguf";
  std::ofstream(path, std::ios::binary) << "GGUF\x01";
  try {
    GGUFFile f(path);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind(path + ": ", 0), 0u) << e.what();
  }
  EXPECT_THROW(GGUFFile(dir / "missing.gguf"), Error);
}

}  // namespace
}  // namespace toga
