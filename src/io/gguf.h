// GGUF (versions 2 and 3), read from the published format: magic "GGUF", version, tensor count,
// metadata count, typed metadata key/values, tensor infos, padding to general.alignment, data.
// Every count, length and offset read from a file is checked before use.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/model_config.h"
#include "io/tensor_source.h"
#include "util/mapped_file.h"

namespace toga {

// GGUF metadata value types, numbered as in the format.
enum class GGUFType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};

struct GGUFValue {
  GGUFType type = GGUFType::UINT8;
  // Scalars are widened: integers (and bool) to int64/uint64, floats to double.
  std::variant<int64_t, uint64_t, double, bool, std::string, std::vector<GGUFValue>> value;
  GGUFType array_type = GGUFType::UINT8;  // element type when type == ARRAY

  bool is_array() const { return type == GGUFType::ARRAY; }

  // Builders (the writer and tests use them); integer types keep the value widened as above.
  static GGUFValue make_int(GGUFType t, int64_t v);     // INT8/16/32/64 (or unsigned, if v >= 0)
  static GGUFValue make_uint(GGUFType t, uint64_t v);   // UINT8/16/32/64
  static GGUFValue make_float(GGUFType t, double v);    // FLOAT32/FLOAT64
  static GGUFValue make_bool(bool v);
  static GGUFValue make_string(std::string v);
  static GGUFValue make_array(GGUFType elem, std::vector<GGUFValue> items);
};

// "uint32", "string", "array[int32]", ...
std::string gguf_type_name(GGUFType t);
std::string gguf_value_type_name(const GGUFValue& v);

// ggml tensor types, numbered as in ggml.h.
enum class GGMLType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15, BF16 = 30,
};

struct GGUFTensorInfo {
  std::string name;            // GGUF name, e.g. "blk.0.attn_q.weight"
  std::vector<uint64_t> ne;    // ggml order: ne[0] is the fastest-varying (input) dimension
  GGMLType type = GGMLType::F32;
  uint64_t offset = 0;         // relative to the data section
  uint64_t nbytes = 0;
  int64_t numel() const;
};

// Block size (elements) and bytes per block of a tensor type; throws for unsupported types.
struct GGMLTypeTraits {
  const char* name;
  int64_t block_elems;
  int64_t block_bytes;
};
// True for the types dequantize() decodes (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K,
// Q6_K). ggml_type_traits also knows the layout of other ggml types (so files holding them still
// parse) and throws only for type numbers it does not know.
bool ggml_type_supported(uint32_t type);
GGMLTypeTraits ggml_type_traits(GGMLType type);
std::string ggml_type_name(uint32_t type);  // "Q4_K", or "type 99" when unknown

// Dequantizes n elements (a multiple of the block size) from src to dst.
void dequantize(GGMLType type, const uint8_t* src, float* dst, int64_t n);

class GGUFFile {
 public:
  explicit GGUFFile(const std::string& path);
  // Parses from memory without a file (the fuzzer uses this); `where` names the input in errors.
  // The buffer is not copied: it must outlive the returned object.
  static std::unique_ptr<GGUFFile> parse(const uint8_t* data, size_t size, const std::string& where);

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  const std::string& path() const { return path_; }

  const std::map<std::string, GGUFValue>& metadata() const { return metadata_; }
  bool has(const std::string& key) const { return metadata_.count(key) != 0; }
  // Typed getters: a missing key or a wrong type is an error naming the file and the key.
  // get_int accepts every integer width and signedness (a uint64 above INT64_MAX is an error);
  // get_float and get_float_array also accept integers; get_int_array any integer element type.
  const GGUFValue& get(const std::string& key) const;
  std::string get_string(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  std::vector<std::string> get_string_array(const std::string& key) const;
  std::vector<int64_t> get_int_array(const std::string& key) const;
  std::vector<double> get_float_array(const std::string& key) const;

  const std::vector<GGUFTensorInfo>& tensors() const { return tensors_; }
  const GGUFTensorInfo* find_tensor(const std::string& name) const;
  const uint8_t* tensor_data(const GGUFTensorInfo& t) const;
  void read_f32(const GGUFTensorInfo& t, float* dst) const;  // dequantized, ggml order
  void release(const GGUFTensorInfo& t) const;

  // Metadata and tensor table as JSON, for debugging; arrays longer than max_array_items are shown
  // by type, length and their first items.
  nlohmann::json to_json(size_t max_array_items = 16) const;

 private:
  GGUFFile() = default;
  void parse_all(const uint8_t* data, size_t size);

  std::string path_;
  std::unique_ptr<MappedFile> map_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::map<std::string, GGUFValue> metadata_;
  std::vector<GGUFTensorInfo> tensors_;
};

// Writes a GGUF v3 file (tests build their fixtures with it; `toga` may export with it later).
class GGUFWriter {
 public:
  void set(const std::string& key, GGUFValue v);
  void set_string(const std::string& key, const std::string& v);
  void set_uint32(const std::string& key, uint32_t v);
  void set_float32(const std::string& key, float v);
  void set_bool(const std::string& key, bool v);
  void set_string_array(const std::string& key, const std::vector<std::string>& v);
  void set_int32(const std::string& key, int32_t v);
  void set_uint64(const std::string& key, uint64_t v);
  void set_int32_array(const std::string& key, const std::vector<int32_t>& v);
  void set_float32_array(const std::string& key, const std::vector<float>& v);
  // Raw, already-encoded tensor bytes of the given type; ne in ggml order. The byte count must
  // match the type and shape.
  void add_tensor(const std::string& name, GGMLType type, const std::vector<uint64_t>& ne,
                  std::vector<uint8_t> bytes);
  void set_alignment(uint32_t a);  // also written as general.alignment (uint32)
  void write(const std::string& path) const;  // atomically
  std::vector<uint8_t> to_bytes() const;

 private:
  std::vector<uint8_t> encode_header() const;  // everything up to the (aligned) data section

  std::vector<std::pair<std::string, GGUFValue>> kv_;
  struct Pending { std::string name; GGMLType type; std::vector<uint64_t> ne; std::vector<uint8_t> bytes; };
  std::vector<Pending> tensors_;
  uint32_t alignment_ = 32;
};

// The HF-style configuration a GGUF file describes (architectures llama, qwen2, qwen3), from its
// `ARCH.*` and `tokenizer.ggml.*` metadata and, where metadata cannot say, its tensor table (biases,
// tied output, llama3 rope factors). Errors name the file and the key. open_gguf_checkpoint uses it.
ModelConfig gguf_model_config(const GGUFFile& f);

// The Hugging Face name of a GGUF tensor ("blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight");
// empty when the name has no HF counterpart.
std::string gguf_to_hf_name(const std::string& gguf_name);

}  // namespace toga
