// GGUF reader and writer. Layout (versions 2 and 3, little-endian):
//   "GGUF" | u32 version | u64 tensor_count | u64 kv_count | kv_count × (string key, u32 type, value)
//   | tensor_count × (string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset)
//   | zero padding to general.alignment | tensor data (each offset relative to here, aligned)
// A string is u64 length + bytes; an array is u32 element type + u64 count + elements.
#include "io/gguf.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>

#include "util/atomic_file.h"
#include "util/error.h"
#include "util/half.h"

namespace toga {

// ---------------------------------------------------------------------------------------------
// Types

namespace {

struct TypeRow {
  uint32_t id;
  const char* name;
  int64_t block_elems;
  int64_t block_bytes;
  bool dequantizable;
};

// Layouts from ggml's block definitions; QK_K = 256. Types whose layout is known but that toga does
// not decode still parse, so metadata (e.g. the tokenizer) of such files remains readable.
constexpr TypeRow kTypes[] = {
    {0, "F32", 1, 4, true},
    {1, "F16", 1, 2, true},
    {2, "Q4_0", 32, 18, true},
    {3, "Q4_1", 32, 20, true},
    {6, "Q5_0", 32, 22, true},
    {7, "Q5_1", 32, 24, true},
    {8, "Q8_0", 32, 34, true},
    {9, "Q8_1", 32, 36, false},
    {10, "Q2_K", 256, 84, false},
    {11, "Q3_K", 256, 110, false},
    {12, "Q4_K", 256, 144, true},
    {13, "Q5_K", 256, 176, true},
    {14, "Q6_K", 256, 210, true},
    {15, "Q8_K", 256, 292, false},
    {24, "I8", 1, 1, false},
    {25, "I16", 1, 2, false},
    {26, "I32", 1, 4, false},
    {27, "I64", 1, 8, false},
    {28, "F64", 1, 8, false},
    {30, "BF16", 1, 2, true},
};

const TypeRow* find_type(uint32_t id) {
  for (const auto& r : kTypes)
    if (r.id == id) return &r;
  return nullptr;
}

std::string supported_list() {
  std::string s;
  for (const auto& r : kTypes)
    if (r.dequantizable) s += (s.empty() ? "" : ", ") + std::string(r.name);
  return s;
}

bool is_integer_type(GGUFType t) {
  switch (t) {
    case GGUFType::UINT8: case GGUFType::INT8: case GGUFType::UINT16: case GGUFType::INT16:
    case GGUFType::UINT32: case GGUFType::INT32: case GGUFType::UINT64: case GGUFType::INT64:
      return true;
    default:
      return false;
  }
}

bool is_unsigned_type(GGUFType t) {
  return t == GGUFType::UINT8 || t == GGUFType::UINT16 || t == GGUFType::UINT32 || t == GGUFType::UINT64;
}

bool is_float_type(GGUFType t) { return t == GGUFType::FLOAT32 || t == GGUFType::FLOAT64; }

// Encoded size of a scalar value type; 0 for string and array.
size_t scalar_size(GGUFType t) {
  switch (t) {
    case GGUFType::UINT8: case GGUFType::INT8: case GGUFType::BOOL: return 1;
    case GGUFType::UINT16: case GGUFType::INT16: return 2;
    case GGUFType::UINT32: case GGUFType::INT32: case GGUFType::FLOAT32: return 4;
    case GGUFType::UINT64: case GGUFType::INT64: case GGUFType::FLOAT64: return 8;
    default: return 0;
  }
}

bool valid_value_type(uint32_t t) { return t <= static_cast<uint32_t>(GGUFType::FLOAT64); }

// Smallest possible encoding of one value of type t: bounds an array's count by the bytes left
// before anything is allocated.
size_t min_encoded_size(GGUFType t) {
  if (t == GGUFType::STRING) return 8;
  if (t == GGUFType::ARRAY) return 12;
  return scalar_size(t);
}

constexpr int kMaxArrayDepth = 8;

}  // namespace

std::string gguf_type_name(GGUFType t) {
  switch (t) {
    case GGUFType::UINT8: return "uint8";
    case GGUFType::INT8: return "int8";
    case GGUFType::UINT16: return "uint16";
    case GGUFType::INT16: return "int16";
    case GGUFType::UINT32: return "uint32";
    case GGUFType::INT32: return "int32";
    case GGUFType::FLOAT32: return "float32";
    case GGUFType::BOOL: return "bool";
    case GGUFType::STRING: return "string";
    case GGUFType::ARRAY: return "array";
    case GGUFType::UINT64: return "uint64";
    case GGUFType::INT64: return "int64";
    case GGUFType::FLOAT64: return "float64";
  }
  return "type " + std::to_string(static_cast<uint32_t>(t));
}

std::string gguf_value_type_name(const GGUFValue& v) {
  if (!v.is_array()) return gguf_type_name(v.type);
  if (v.array_type == GGUFType::ARRAY) {
    // Nested: name the first element's element type when there is one.
    const auto& items = std::get<std::vector<GGUFValue>>(v.value);
    return "array[" + (items.empty() ? std::string("array") : gguf_value_type_name(items[0])) + "]";
  }
  return "array[" + gguf_type_name(v.array_type) + "]";
}

std::string ggml_type_name(uint32_t type) {
  const TypeRow* r = find_type(type);
  return r ? r->name : "type " + std::to_string(type);
}

bool ggml_type_supported(uint32_t type) {
  const TypeRow* r = find_type(type);
  return r && r->dequantizable;
}

GGMLTypeTraits ggml_type_traits(GGMLType type) {
  const TypeRow* r = find_type(static_cast<uint32_t>(type));
  if (!r) fail("unknown ggml tensor type {}", static_cast<uint32_t>(type));
  return {r->name, r->block_elems, r->block_bytes};
}

int64_t GGUFTensorInfo::numel() const {
  int64_t n = 1;
  for (auto d : ne) n *= static_cast<int64_t>(d);
  return n;
}

// ---------------------------------------------------------------------------------------------
// GGUFValue builders

GGUFValue GGUFValue::make_int(GGUFType t, int64_t v) {
  if (!is_integer_type(t)) fail("GGUFValue::make_int: {} is not an integer type", gguf_type_name(t));
  GGUFValue out;
  out.type = t;
  if (is_unsigned_type(t)) {
    if (v < 0) fail("GGUFValue::make_int: negative value {} for {}", v, gguf_type_name(t));
    out.value = static_cast<uint64_t>(v);
  } else {
    out.value = v;
  }
  return out;
}

GGUFValue GGUFValue::make_uint(GGUFType t, uint64_t v) {
  if (!is_unsigned_type(t)) fail("GGUFValue::make_uint: {} is not an unsigned type", gguf_type_name(t));
  GGUFValue out;
  out.type = t;
  out.value = v;
  return out;
}

GGUFValue GGUFValue::make_float(GGUFType t, double v) {
  if (!is_float_type(t)) fail("GGUFValue::make_float: {} is not a float type", gguf_type_name(t));
  GGUFValue out;
  out.type = t;
  out.value = t == GGUFType::FLOAT32 ? static_cast<double>(static_cast<float>(v)) : v;
  return out;
}

GGUFValue GGUFValue::make_bool(bool v) {
  GGUFValue out;
  out.type = GGUFType::BOOL;
  out.value = v;
  return out;
}

GGUFValue GGUFValue::make_string(std::string v) {
  GGUFValue out;
  out.type = GGUFType::STRING;
  out.value = std::move(v);
  return out;
}

GGUFValue GGUFValue::make_array(GGUFType elem, std::vector<GGUFValue> items) {
  for (const auto& it : items)
    if (it.type != elem)
      fail("GGUFValue::make_array: element of type {} in an array of {}", gguf_type_name(it.type),
           gguf_type_name(elem));
  GGUFValue out;
  out.type = GGUFType::ARRAY;
  out.array_type = elem;
  out.value = std::move(items);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Parsing

namespace {

// Bounds-checked little-endian cursor; every failure names the input and the byte offset.
class Cursor {
 public:
  Cursor(const uint8_t* data, size_t size, const std::string& where) : p_(data), size_(size), where_(where) {}

  size_t pos() const { return pos_; }
  size_t left() const { return size_ - pos_; }

  void need(size_t n, const char* what) const {
    if (n > left())
      fail_file(where_, "truncated: {} needs {} bytes at offset {} but only {} remain", what, n, pos_, left());
  }

  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string read_string(const char* what) {
    const size_t at = pos_;
    const uint64_t len = read<uint64_t>(what);
    if (len > left())
      fail_file(where_, "{} at offset {} has length {} past the end of the input ({} bytes remain)", what, at,
                len, left());
    std::string s(reinterpret_cast<const char*>(p_ + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return s;
  }

  [[noreturn]] void error(const std::string& msg) const { fail_file(where_, "{}", msg); }

 private:
  const uint8_t* p_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& where_;
};

GGUFValue read_value(Cursor& c, GGUFType t, const std::string& key, int depth) {
  GGUFValue v;
  v.type = t;
  switch (t) {
    case GGUFType::UINT8: v.value = static_cast<uint64_t>(c.read<uint8_t>("uint8 value")); break;
    case GGUFType::INT8: v.value = static_cast<int64_t>(c.read<int8_t>("int8 value")); break;
    case GGUFType::UINT16: v.value = static_cast<uint64_t>(c.read<uint16_t>("uint16 value")); break;
    case GGUFType::INT16: v.value = static_cast<int64_t>(c.read<int16_t>("int16 value")); break;
    case GGUFType::UINT32: v.value = static_cast<uint64_t>(c.read<uint32_t>("uint32 value")); break;
    case GGUFType::INT32: v.value = static_cast<int64_t>(c.read<int32_t>("int32 value")); break;
    case GGUFType::UINT64: v.value = c.read<uint64_t>("uint64 value"); break;
    case GGUFType::INT64: v.value = c.read<int64_t>("int64 value"); break;
    case GGUFType::FLOAT32: v.value = static_cast<double>(c.read<float>("float32 value")); break;
    case GGUFType::FLOAT64: v.value = c.read<double>("float64 value"); break;
    case GGUFType::BOOL: {
      const size_t at = c.pos();
      const uint8_t b = c.read<uint8_t>("bool value");
      if (b > 1) c.error(fmt::format("metadata key '{}': bool at offset {} has value {} (must be 0 or 1)", key, at, b));
      v.value = b != 0;
      break;
    }
    case GGUFType::STRING: v.value = c.read_string("string value"); break;
    case GGUFType::ARRAY: {
      if (depth >= kMaxArrayDepth)
        c.error(fmt::format("metadata key '{}': arrays nested deeper than {}", key, kMaxArrayDepth));
      const size_t at = c.pos();
      const uint32_t et = c.read<uint32_t>("array element type");
      if (!valid_value_type(et))
        c.error(fmt::format("metadata key '{}': array at offset {} has unknown element type {}", key, at, et));
      const uint64_t n = c.read<uint64_t>("array length");
      const GGUFType elem = static_cast<GGUFType>(et);
      // Every element takes at least min_encoded_size bytes, so a count the remaining input cannot
      // hold is rejected before anything is allocated (this also rules out count*size overflow).
      const size_t each = min_encoded_size(elem);
      if (n > c.left() / each)
        c.error(fmt::format("metadata key '{}': array at offset {} has {} elements of type {}, past the end "
                            "of the input ({} bytes remain)",
                            key, at, n, gguf_type_name(elem), c.left()));
      std::vector<GGUFValue> items;
      items.reserve(static_cast<size_t>(n));
      for (uint64_t i = 0; i < n; ++i) items.push_back(read_value(c, elem, key, depth + 1));
      v.array_type = elem;
      v.value = std::move(items);
      break;
    }
  }
  return v;
}

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

}  // namespace

GGUFFile::GGUFFile(const std::string& path) : path_(path) {
  map_ = std::make_unique<MappedFile>(path);
  parse_all(map_->data(), map_->size());
}

std::unique_ptr<GGUFFile> GGUFFile::parse(const uint8_t* data, size_t size, const std::string& where) {
  std::unique_ptr<GGUFFile> f(new GGUFFile());
  f->path_ = where;
  f->parse_all(data, size);
  return f;
}

void GGUFFile::parse_all(const uint8_t* data, size_t size) {
  base_ = data;
  size_ = size;
  Cursor c(data, size, path_);

  if (size < 4) fail_file(path_, "truncated: {} bytes is too short for a GGUF header", size);
  if (std::memcmp(data, "GGUF", 4) != 0) {
    fail_file(path_, "not a GGUF file: magic is {:02x} {:02x} {:02x} {:02x}, expected \"GGUF\" (47 47 55 46)",
              data[0], data[1], data[2], data[3]);
  }
  c.read<uint32_t>("magic");
  version_ = c.read<uint32_t>("version");
  if (version_ != 2 && version_ != 3) {
    if (version_ == 1)
      fail_file(path_, "GGUF version 1 is not supported (it used 32-bit counts; supported: 2, 3)");
    // A big-endian file (allowed by v3) shows its version byte-swapped.
    if ((version_ & 0xffffu) == 0 && ((version_ >> 24) == 2 || (version_ >> 24) == 3))
      fail_file(path_, "big-endian GGUF files are not supported");
    fail_file(path_, "unsupported GGUF version {} (supported: 2, 3)", version_);
  }
  const uint64_t n_tensors = c.read<uint64_t>("tensor count");
  const uint64_t n_kv = c.read<uint64_t>("metadata count");

  // Minimal encodings: key (8) + type (4) + 1-byte value; name (8) + n_dims (4) + type (4) + offset (8).
  if (n_kv > c.left() / 13)
    fail_file(path_, "metadata count {} cannot fit in the {} bytes of the file after the header", n_kv, c.left());
  if (n_tensors > c.left() / 24)
    fail_file(path_, "tensor count {} cannot fit in the {} bytes of the file after the header", n_tensors, c.left());

  for (uint64_t i = 0; i < n_kv; ++i) {
    const std::string key = c.read_string("metadata key");
    const size_t at = c.pos();
    const uint32_t t = c.read<uint32_t>("metadata value type");
    if (!valid_value_type(t)) fail_file(path_, "metadata key '{}' at offset {} has unknown value type {}", key, at, t);
    GGUFValue v = read_value(c, static_cast<GGUFType>(t), key, 0);
    if (!metadata_.emplace(key, std::move(v)).second) fail_file(path_, "duplicate metadata key '{}'", key);
  }

  alignment_ = 32;
  if (has("general.alignment")) {
    const GGUFValue& a = metadata_.at("general.alignment");
    if (!is_integer_type(a.type))
      fail_file(path_, "metadata key 'general.alignment' has type {}, expected uint32", gguf_value_type_name(a));
    const int64_t av = get_int("general.alignment");
    if (av <= 0 || (av & (av - 1)) != 0)
      fail_file(path_, "general.alignment {} is not a positive power of two", av);
    if (av > (int64_t(1) << 30)) fail_file(path_, "general.alignment {} is unreasonably large", av);
    alignment_ = static_cast<uint64_t>(av);
  }

  std::set<std::string> names;
  tensors_.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GGUFTensorInfo t;
    t.name = c.read_string("tensor name");
    if (!names.insert(t.name).second) fail_file(path_, "duplicate tensor name '{}'", t.name);
    const uint32_t n_dims = c.read<uint32_t>("tensor n_dims");
    if (n_dims == 0 || n_dims > 4)
      fail_file(path_, "tensor '{}' has {} dimensions (supported: 1 to 4)", t.name, n_dims);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t ne = c.read<uint64_t>("tensor dimension");
      if (ne == 0) fail_file(path_, "tensor '{}' has a zero dimension (ne[{}] = 0)", t.name, d);
      if (ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          __builtin_mul_overflow(numel, ne, &numel) ||
          numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail_file(path_, "tensor '{}' has dimensions whose element count overflows int64", t.name);
      t.ne.push_back(ne);
    }
    const uint32_t type = c.read<uint32_t>("tensor type");
    const TypeRow* row = find_type(type);
    if (!row) fail_file(path_, "tensor '{}' has unknown ggml type {}", t.name, type);
    t.type = static_cast<GGMLType>(type);
    if (t.ne[0] % static_cast<uint64_t>(row->block_elems) != 0)
      fail_file(path_, "tensor '{}' of type {} has ne[0] = {}, not a multiple of its block size {}", t.name,
                row->name, t.ne[0], row->block_elems);
    if (__builtin_mul_overflow(numel / static_cast<uint64_t>(row->block_elems),
                               static_cast<uint64_t>(row->block_bytes), &t.nbytes))
      fail_file(path_, "tensor '{}' byte size overflows", t.name);
    t.offset = c.read<uint64_t>("tensor offset");
    if (t.offset % alignment_ != 0)
      fail_file(path_, "tensor '{}' data offset {} is not a multiple of the alignment {}", t.name, t.offset,
                alignment_);
    tensors_.push_back(std::move(t));
  }

  data_offset_ = align_up(c.pos(), alignment_);
  if (!tensors_.empty() && data_offset_ > size_)
    fail_file(path_, "truncated: the tensor data section starts at {} but the file has {} bytes", data_offset_, size_);
  const uint64_t data_size = data_offset_ <= size_ ? size_ - data_offset_ : 0;

  std::vector<const GGUFTensorInfo*> by_offset;
  for (const auto& t : tensors_) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      fail_file(path_, "tensor '{}' data [{}, +{}) lies outside the data section ({} bytes)", t.name, t.offset,
                t.nbytes, data_size);
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GGUFTensorInfo* a, const GGUFTensorInfo* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const auto* a = by_offset[i - 1];
    const auto* b = by_offset[i];
    if (a->offset + a->nbytes > b->offset)
      fail_file(path_, "tensor data of '{}' [{}, +{}) overlaps '{}' at {}", a->name, a->offset, a->nbytes, b->name,
                b->offset);
  }
}

// ---------------------------------------------------------------------------------------------
// Getters

const GGUFValue& GGUFFile::get(const std::string& key) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end()) fail_file(path_, "metadata key '{}' missing", key);
  return it->second;
}

namespace {

[[noreturn]] void wrong_type(const std::string& path, const std::string& key, const GGUFValue& v,
                             const char* expected) {
  fail_file(path, "metadata key '{}' has type {}, expected {}", key, gguf_value_type_name(v), expected);
}

// Integer value (any width, signed or not) as int64; false when the type is not an integer.
bool as_int(const GGUFValue& v, int64_t& out, bool& overflow) {
  overflow = false;
  if (!is_integer_type(v.type)) return false;
  if (const auto* u = std::get_if<uint64_t>(&v.value)) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) overflow = true;
    out = static_cast<int64_t>(*u);
  } else {
    out = std::get<int64_t>(v.value);
  }
  return true;
}

bool as_double(const GGUFValue& v, double& out) {
  if (is_float_type(v.type)) {
    out = std::get<double>(v.value);
    return true;
  }
  int64_t i;
  bool overflow;
  if (as_int(v, i, overflow)) {
    out = overflow ? static_cast<double>(std::get<uint64_t>(v.value)) : static_cast<double>(i);
    return true;
  }
  return false;
}

}  // namespace

std::string GGUFFile::get_string(const std::string& key) const {
  const GGUFValue& v = get(key);
  if (v.type != GGUFType::STRING) wrong_type(path_, key, v, "string");
  return std::get<std::string>(v.value);
}

int64_t GGUFFile::get_int(const std::string& key) const {
  const GGUFValue& v = get(key);
  int64_t out;
  bool overflow;
  if (!as_int(v, out, overflow)) wrong_type(path_, key, v, "an integer");
  if (overflow) fail_file(path_, "metadata key '{}' value {} does not fit int64", key, std::get<uint64_t>(v.value));
  return out;
}

double GGUFFile::get_float(const std::string& key) const {
  const GGUFValue& v = get(key);
  double out;
  if (!as_double(v, out)) wrong_type(path_, key, v, "a number");
  return out;
}

bool GGUFFile::get_bool(const std::string& key) const {
  const GGUFValue& v = get(key);
  if (v.type != GGUFType::BOOL) wrong_type(path_, key, v, "bool");
  return std::get<bool>(v.value);
}

std::vector<std::string> GGUFFile::get_string_array(const std::string& key) const {
  const GGUFValue& v = get(key);
  if (!v.is_array() || v.array_type != GGUFType::STRING) wrong_type(path_, key, v, "array[string]");
  const auto& items = std::get<std::vector<GGUFValue>>(v.value);
  std::vector<std::string> out;
  out.reserve(items.size());
  for (const auto& it : items) out.push_back(std::get<std::string>(it.value));
  return out;
}

std::vector<int64_t> GGUFFile::get_int_array(const std::string& key) const {
  const GGUFValue& v = get(key);
  if (!v.is_array() || !is_integer_type(v.array_type)) wrong_type(path_, key, v, "an array of integers");
  const auto& items = std::get<std::vector<GGUFValue>>(v.value);
  std::vector<int64_t> out;
  out.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    int64_t x;
    bool overflow;
    as_int(items[i], x, overflow);
    if (overflow) fail_file(path_, "metadata key '{}' element {} does not fit int64", key, i);
    out.push_back(x);
  }
  return out;
}

std::vector<double> GGUFFile::get_float_array(const std::string& key) const {
  const GGUFValue& v = get(key);
  if (!v.is_array() || !(is_float_type(v.array_type) || is_integer_type(v.array_type)))
    wrong_type(path_, key, v, "an array of numbers");
  const auto& items = std::get<std::vector<GGUFValue>>(v.value);
  std::vector<double> out;
  out.reserve(items.size());
  for (const auto& it : items) {
    double x = 0;
    as_double(it, x);
    out.push_back(x);
  }
  return out;
}

const GGUFTensorInfo* GGUFFile::find_tensor(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

const uint8_t* GGUFFile::tensor_data(const GGUFTensorInfo& t) const {
  // Bounds were checked at parse time for every tensor of this file.
  return base_ + data_offset_ + t.offset;
}

void GGUFFile::read_f32(const GGUFTensorInfo& t, float* dst) const {
  if (!ggml_type_supported(static_cast<uint32_t>(t.type)))
    fail_file(path_, "tensor '{}' has type {}, which toga cannot decode (supported: {})", t.name,
              ggml_type_name(static_cast<uint32_t>(t.type)), supported_list());
  dequantize(t.type, tensor_data(t), dst, t.numel());
}

void GGUFFile::release(const GGUFTensorInfo& t) const {
  if (map_) map_->release(static_cast<size_t>(data_offset_ + t.offset), static_cast<size_t>(t.nbytes));
}

namespace {

// File strings are arbitrary bytes, but nlohmann::json refuses to dump invalid UTF-8: keep valid
// sequences and show any other byte as \xNN.
std::string printable_utf8(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    size_t len = 0;
    uint32_t cp = 0;
    if (c < 0x80) len = 1, cp = c;
    else if ((c & 0xe0) == 0xc0) len = 2, cp = c & 0x1f;
    else if ((c & 0xf0) == 0xe0) len = 3, cp = c & 0x0f;
    else if ((c & 0xf8) == 0xf0) len = 4, cp = c & 0x07;
    bool ok = len > 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) {
      ok = (p[i + k] & 0xc0) == 0x80;
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    // Reject overlong encodings, surrogates and values past U+10FFFF, as JSON encoders do.
    static const uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (ok && (cp < kMin[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))) ok = false;
    if (ok) {
      out.append(s, i, len);
      i += len;
    } else {
      out += fmt::format("\\x{:02x}", c);
      ++i;
    }
  }
  return out;
}

nlohmann::json value_json(const GGUFValue& v, size_t max_items) {
  switch (v.type) {
    case GGUFType::STRING: return printable_utf8(std::get<std::string>(v.value));
    case GGUFType::BOOL: return std::get<bool>(v.value);
    case GGUFType::FLOAT32: case GGUFType::FLOAT64: {
      const double d = std::get<double>(v.value);
      return std::isfinite(d) ? nlohmann::json(d) : nlohmann::json(fmt::format("{}", d));
    }
    case GGUFType::ARRAY: {
      const auto& items = std::get<std::vector<GGUFValue>>(v.value);
      nlohmann::json arr = nlohmann::json::array();
      for (size_t i = 0; i < items.size() && i < max_items; ++i) arr.push_back(value_json(items[i], max_items));
      if (items.size() <= max_items) return arr;
      return {{"type", gguf_value_type_name(v)}, {"length", items.size()}, {"first", arr}};
    }
    default:
      if (const auto* u = std::get_if<uint64_t>(&v.value)) return *u;
      return std::get<int64_t>(v.value);
  }
}

}  // namespace

nlohmann::json GGUFFile::to_json(size_t max_array_items) const {
  nlohmann::json j;
  j["path"] = printable_utf8(path_);
  j["version"] = version_;
  j["alignment"] = alignment_;
  j["data_offset"] = data_offset_;
  nlohmann::json md = nlohmann::json::object();
  for (const auto& [k, v] : metadata_) md[printable_utf8(k)] = value_json(v, max_array_items);
  j["metadata"] = md;
  nlohmann::json ts = nlohmann::json::array();
  for (const auto& t : tensors_)
    ts.push_back({{"name", printable_utf8(t.name)},
                  {"type", ggml_type_name(static_cast<uint32_t>(t.type))},
                  {"ne", t.ne},
                  {"offset", t.offset},
                  {"nbytes", t.nbytes}});
  j["tensors"] = ts;
  return j;
}

// ---------------------------------------------------------------------------------------------
// Dequantization. Block layouts follow ggml's definitions. Each value is computed in float with the
// operations in the reference decoder's order (scale times code, then the minimum), so the result is
// bit-identical to llama.cpp's decoders rather than merely close (checked against gguf-py).

namespace {

inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

const float* fp16_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t i = 0; i < 65536; ++i) t[i] = fp16_to_float(static_cast<uint16_t>(i));
    return t;
  }();
  return table.data();
}

inline float half_at(const float* lut, const uint8_t* p) { return lut[load_u16(p)]; }

void block_q8_0(const float* lut, const uint8_t* b, float* y) {
  const float d = half_at(lut, b);
  const int8_t* q = reinterpret_cast<const int8_t*>(b + 2);
  for (int i = 0; i < 32; ++i) y[i] = d * static_cast<float>(q[i]);
}

void block_q4_0(const float* lut, const uint8_t* b, float* y) {
  const float d = half_at(lut, b);
  const uint8_t* q = b + 2;
  for (int i = 0; i < 16; ++i) {
    y[i] = d * static_cast<float>((q[i] & 0x0f) - 8);
    y[i + 16] = d * static_cast<float>((q[i] >> 4) - 8);
  }
}

void block_q4_1(const float* lut, const uint8_t* b, float* y) {
  const float d = half_at(lut, b);
  const float m = half_at(lut, b + 2);
  const uint8_t* q = b + 4;
  for (int i = 0; i < 16; ++i) {
    y[i] = d * static_cast<float>(q[i] & 0x0f) + m;
    y[i + 16] = d * static_cast<float>(q[i] >> 4) + m;
  }
}

// Q5: a 32-bit word of fifth bits, bit i belonging to element i.
void block_q5_0(const float* lut, const uint8_t* b, float* y) {
  const float d = half_at(lut, b);
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  const uint8_t* q = b + 6;
  for (int i = 0; i < 16; ++i) {
    const int lo = (q[i] & 0x0f) | (((qh >> i) & 1u) << 4);
    const int hi = (q[i] >> 4) | (((qh >> (i + 16)) & 1u) << 4);
    y[i] = d * static_cast<float>(lo - 16);
    y[i + 16] = d * static_cast<float>(hi - 16);
  }
}

void block_q5_1(const float* lut, const uint8_t* b, float* y) {
  const float d = half_at(lut, b);
  const float m = half_at(lut, b + 2);
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  const uint8_t* q = b + 8;
  for (int i = 0; i < 16; ++i) {
    const int lo = (q[i] & 0x0f) | (((qh >> i) & 1u) << 4);
    const int hi = (q[i] >> 4) | (((qh >> (i + 16)) & 1u) << 4);
    y[i] = d * static_cast<float>(lo) + m;
    y[i + 16] = d * static_cast<float>(hi) + m;
  }
}

// The 12 scale bytes of Q4_K/Q5_K hold eight 6-bit scales and eight 6-bit mins: sub-blocks 0..3
// use the low 6 bits of bytes 0..3 (scales) and 4..7 (mins); sub-blocks 4..7 take their low 4 bits
// from the nibbles of bytes 8..11 and their top 2 bits from the spare top bits of bytes 0..7.
inline void k_scale_min(int j, const uint8_t* s, int& sc, int& mn) {
  if (j < 4) {
    sc = s[j] & 63;
    mn = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
    mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

void block_q4_k(const float* lut, const uint8_t* b, float* y) {
  const float d = half_at(lut, b);
  const float dmin = half_at(lut, b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  for (int c = 0; c < 4; ++c) {  // 64 values per chunk: 32 low nibbles, then 32 high nibbles
    int sc, mn;
    k_scale_min(2 * c, scales, sc, mn);
    const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(mn);
    k_scale_min(2 * c + 1, scales, sc, mn);
    const float d2 = d * static_cast<float>(sc), m2 = dmin * static_cast<float>(mn);
    const uint8_t* qc = q + 32 * c;
    float* yc = y + 64 * c;
    for (int l = 0; l < 32; ++l) {
      yc[l] = d1 * static_cast<float>(qc[l] & 0x0f) - m1;
      yc[l + 32] = d2 * static_cast<float>(qc[l] >> 4) - m2;
    }
  }
}

void block_q5_k(const float* lut, const uint8_t* b, float* y) {
  const float d = half_at(lut, b);
  const float dmin = half_at(lut, b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;  // bit 2c of qh[l] is element 64c+l's fifth bit, bit 2c+1 element 64c+32+l's
  const uint8_t* q = b + 48;
  for (int c = 0; c < 4; ++c) {
    int sc, mn;
    k_scale_min(2 * c, scales, sc, mn);
    const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(mn);
    k_scale_min(2 * c + 1, scales, sc, mn);
    const float d2 = d * static_cast<float>(sc), m2 = dmin * static_cast<float>(mn);
    const uint8_t* qc = q + 32 * c;
    float* yc = y + 64 * c;
    for (int l = 0; l < 32; ++l) {
      const int lo = (qc[l] & 0x0f) | (((qh[l] >> (2 * c)) & 1) << 4);
      const int hi = (qc[l] >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4);
      yc[l] = d1 * static_cast<float>(lo) - m1;
      yc[l + 32] = d2 * static_cast<float>(hi) - m2;
    }
  }
}

void block_q6_k(const float* lut, const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = half_at(lut, b + 208);
  for (int n = 0; n < 2; ++n) {  // two halves of 128: ql 64 bytes, qh 32 bytes, 8 scales each
    const uint8_t* l4 = ql + 64 * n;
    const uint8_t* h2 = qh + 32 * n;
    const int8_t* s = sc + 8 * n;
    float* yn = y + 128 * n;
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((l4[l] & 0x0f) | (((h2[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((l4[l + 32] & 0x0f) | (((h2[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((l4[l] >> 4) | (((h2[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((l4[l + 32] >> 4) | (((h2[l] >> 6) & 3) << 4)) - 32;
      yn[l] = d * static_cast<float>(s[is]) * static_cast<float>(q1);
      yn[l + 32] = d * static_cast<float>(s[is + 2]) * static_cast<float>(q2);
      yn[l + 64] = d * static_cast<float>(s[is + 4]) * static_cast<float>(q3);
      yn[l + 96] = d * static_cast<float>(s[is + 6]) * static_cast<float>(q4);
    }
  }
}

template <typename F>
void for_blocks(int64_t nblocks, int64_t block_bytes, int64_t block_elems, const uint8_t* src, float* dst, F fn) {
  // One thread decodes ~2G elements/s, so only big tensors repay waking the thread team (on a
  // loaded machine a parallel region can cost milliseconds).
  const bool parallel = nblocks * block_elems >= (int64_t(1) << 22);
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t i = 0; i < nblocks; ++i) fn(src + i * block_bytes, dst + i * block_elems);
}

}  // namespace

void dequantize(GGMLType type, const uint8_t* src, float* dst, int64_t n) {
  const uint32_t id = static_cast<uint32_t>(type);
  const TypeRow* row = find_type(id);
  if (!row || !row->dequantizable)
    fail("cannot dequantize ggml type {} (supported: {})", ggml_type_name(id), supported_list());
  if (n < 0 || n % row->block_elems != 0)
    fail("dequantize {}: {} elements is not a multiple of the block size {}", row->name, n, row->block_elems);
  const int64_t nb = n / row->block_elems;
  const float* lut = fp16_table();
  switch (type) {
    case GGMLType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case GGMLType::F16:
      for_blocks(nb, 2, 1, src, dst, [lut](const uint8_t* b, float* y) { *y = half_at(lut, b); });
      return;
    case GGMLType::BF16:
      for_blocks(nb, 2, 1, src, dst, [](const uint8_t* b, float* y) { *y = bf16_to_float(load_u16(b)); });
      return;
    case GGMLType::Q8_0: for_blocks(nb, 34, 32, src, dst, [lut](const uint8_t* b, float* y) { block_q8_0(lut, b, y); }); return;
    case GGMLType::Q4_0: for_blocks(nb, 18, 32, src, dst, [lut](const uint8_t* b, float* y) { block_q4_0(lut, b, y); }); return;
    case GGMLType::Q4_1: for_blocks(nb, 20, 32, src, dst, [lut](const uint8_t* b, float* y) { block_q4_1(lut, b, y); }); return;
    case GGMLType::Q5_0: for_blocks(nb, 22, 32, src, dst, [lut](const uint8_t* b, float* y) { block_q5_0(lut, b, y); }); return;
    case GGMLType::Q5_1: for_blocks(nb, 24, 32, src, dst, [lut](const uint8_t* b, float* y) { block_q5_1(lut, b, y); }); return;
    case GGMLType::Q4_K: for_blocks(nb, 144, 256, src, dst, [lut](const uint8_t* b, float* y) { block_q4_k(lut, b, y); }); return;
    case GGMLType::Q5_K: for_blocks(nb, 176, 256, src, dst, [lut](const uint8_t* b, float* y) { block_q5_k(lut, b, y); }); return;
    case GGMLType::Q6_K: for_blocks(nb, 210, 256, src, dst, [lut](const uint8_t* b, float* y) { block_q6_k(lut, b, y); }); return;
    default:
      fail("cannot dequantize ggml type {}", row->name);
  }
}

// ---------------------------------------------------------------------------------------------
// Writer

void GGUFWriter::set(const std::string& key, GGUFValue v) {
  for (auto& kv : kv_)
    if (kv.first == key) {
      kv.second = std::move(v);
      return;
    }
  kv_.emplace_back(key, std::move(v));
}

void GGUFWriter::set_string(const std::string& key, const std::string& v) { set(key, GGUFValue::make_string(v)); }
void GGUFWriter::set_uint32(const std::string& key, uint32_t v) { set(key, GGUFValue::make_uint(GGUFType::UINT32, v)); }
void GGUFWriter::set_int32(const std::string& key, int32_t v) { set(key, GGUFValue::make_int(GGUFType::INT32, v)); }
void GGUFWriter::set_uint64(const std::string& key, uint64_t v) { set(key, GGUFValue::make_uint(GGUFType::UINT64, v)); }
void GGUFWriter::set_float32(const std::string& key, float v) { set(key, GGUFValue::make_float(GGUFType::FLOAT32, v)); }
void GGUFWriter::set_bool(const std::string& key, bool v) { set(key, GGUFValue::make_bool(v)); }

void GGUFWriter::set_string_array(const std::string& key, const std::vector<std::string>& v) {
  std::vector<GGUFValue> items;
  items.reserve(v.size());
  for (const auto& s : v) items.push_back(GGUFValue::make_string(s));
  set(key, GGUFValue::make_array(GGUFType::STRING, std::move(items)));
}

void GGUFWriter::set_int32_array(const std::string& key, const std::vector<int32_t>& v) {
  std::vector<GGUFValue> items;
  items.reserve(v.size());
  for (auto x : v) items.push_back(GGUFValue::make_int(GGUFType::INT32, x));
  set(key, GGUFValue::make_array(GGUFType::INT32, std::move(items)));
}

void GGUFWriter::set_float32_array(const std::string& key, const std::vector<float>& v) {
  std::vector<GGUFValue> items;
  items.reserve(v.size());
  for (auto x : v) items.push_back(GGUFValue::make_float(GGUFType::FLOAT32, x));
  set(key, GGUFValue::make_array(GGUFType::FLOAT32, std::move(items)));
}

void GGUFWriter::add_tensor(const std::string& name, GGMLType type, const std::vector<uint64_t>& ne,
                            std::vector<uint8_t> bytes) {
  const GGMLTypeTraits tr = ggml_type_traits(type);
  if (ne.empty() || ne.size() > 4) fail("GGUFWriter: tensor '{}' has {} dimensions (1 to 4 allowed)", name, ne.size());
  uint64_t numel = 1;
  for (auto d : ne) numel *= d;
  if (ne[0] % static_cast<uint64_t>(tr.block_elems) != 0)
    fail("GGUFWriter: tensor '{}' ne[0] = {} is not a multiple of the {} block size {}", name, ne[0], tr.name,
         tr.block_elems);
  const uint64_t want = numel / static_cast<uint64_t>(tr.block_elems) * static_cast<uint64_t>(tr.block_bytes);
  if (bytes.size() != want)
    fail("GGUFWriter: tensor '{}' has {} bytes, {} of this shape needs {}", name, bytes.size(), tr.name, want);
  for (const auto& t : tensors_)
    if (t.name == name) fail("GGUFWriter: duplicate tensor '{}'", name);
  tensors_.push_back({name, type, ne, std::move(bytes)});
}

void GGUFWriter::set_alignment(uint32_t a) {
  if (a == 0 || (a & (a - 1)) != 0) fail("GGUFWriter: alignment {} is not a positive power of two", a);
  alignment_ = a;
  set_uint32("general.alignment", a);
}

namespace {

class Encoder {
 public:
  std::vector<uint8_t> out;
  void put_bytes(const void* p, size_t n) {
    const size_t at = out.size();
    out.resize(at + n);
    if (n) std::memcpy(out.data() + at, p, n);
  }
  template <typename T>
  void put(T v) {
    put_bytes(&v, sizeof(T));
  }
  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    put_bytes(s.data(), s.size());
  }
  void put_value(const GGUFValue& v) {
    auto as_u = [&]() -> uint64_t {
      if (const auto* u = std::get_if<uint64_t>(&v.value)) return *u;
      return static_cast<uint64_t>(std::get<int64_t>(v.value));
    };
    switch (v.type) {
      case GGUFType::UINT8: case GGUFType::INT8: put<uint8_t>(static_cast<uint8_t>(as_u())); break;
      case GGUFType::UINT16: case GGUFType::INT16: put<uint16_t>(static_cast<uint16_t>(as_u())); break;
      case GGUFType::UINT32: case GGUFType::INT32: put<uint32_t>(static_cast<uint32_t>(as_u())); break;
      case GGUFType::UINT64: case GGUFType::INT64: put<uint64_t>(as_u()); break;
      case GGUFType::FLOAT32: put<float>(static_cast<float>(std::get<double>(v.value))); break;
      case GGUFType::FLOAT64: put<double>(std::get<double>(v.value)); break;
      case GGUFType::BOOL: put<uint8_t>(std::get<bool>(v.value) ? 1 : 0); break;
      case GGUFType::STRING: put_string(std::get<std::string>(v.value)); break;
      case GGUFType::ARRAY: {
        const auto& items = std::get<std::vector<GGUFValue>>(v.value);
        put<uint32_t>(static_cast<uint32_t>(v.array_type));
        put<uint64_t>(items.size());
        for (const auto& it : items) {
          if (it.type != v.array_type)
            fail("GGUFWriter: element of type {} in an array of {}", gguf_type_name(it.type),
                 gguf_type_name(v.array_type));
          put_value(it);
        }
        break;
      }
    }
  }
  void pad_to(uint64_t a) { out.resize(static_cast<size_t>(align_up(out.size(), a)), 0); }
};

}  // namespace

std::vector<uint8_t> GGUFWriter::encode_header() const {
  Encoder e;
  e.put_bytes("GGUF", 4);
  e.put<uint32_t>(3);
  e.put<uint64_t>(tensors_.size());
  e.put<uint64_t>(kv_.size());
  for (const auto& [k, v] : kv_) {
    e.put_string(k);
    e.put<uint32_t>(static_cast<uint32_t>(v.type));
    e.put_value(v);
  }
  uint64_t offset = 0;
  for (const auto& t : tensors_) {
    e.put_string(t.name);
    e.put<uint32_t>(static_cast<uint32_t>(t.ne.size()));
    for (auto d : t.ne) e.put<uint64_t>(d);
    e.put<uint32_t>(static_cast<uint32_t>(t.type));
    e.put<uint64_t>(offset);
    offset = align_up(offset + t.bytes.size(), alignment_);
  }
  e.pad_to(alignment_);
  return std::move(e.out);
}

std::vector<uint8_t> GGUFWriter::to_bytes() const {
  Encoder e;
  e.out = encode_header();
  for (size_t i = 0; i < tensors_.size(); ++i) {
    e.put_bytes(tensors_[i].bytes.data(), tensors_[i].bytes.size());
    if (i + 1 < tensors_.size()) e.pad_to(alignment_);
  }
  return e.out;
}

void GGUFWriter::write(const std::string& path) const {
  // Tensor bytes are streamed after the header so an export never holds a second copy of them.
  const std::vector<uint8_t> header = encode_header();
  write_file_atomically(path, [&](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary);
    if (!out) fail_file(tmp, "cannot open for writing");
    out.write(reinterpret_cast<const char*>(header.data()), static_cast<std::streamsize>(header.size()));
    static const char zeros[64] = {};
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const auto& b = tensors_[i].bytes;
      out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
      if (i + 1 < tensors_.size()) {
        uint64_t pad = align_up(b.size(), alignment_) - b.size();
        while (pad > 0) {
          const uint64_t n = std::min<uint64_t>(pad, sizeof(zeros));
          out.write(zeros, static_cast<std::streamsize>(n));
          pad -= n;
        }
      }
    }
    out.close();
    if (!out) fail_file(tmp, "write failed");
  });
}

}  // namespace toga
