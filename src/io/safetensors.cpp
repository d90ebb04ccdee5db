#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "util/atomic_file.h"
#include "util/error.h"

namespace toga {

namespace {

// The reference implementation refuses headers above 100 MB so that a hostile file cannot make the
// JSON parser allocate without bound; real checkpoints stay far below that.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DTypeName {
  const char* name;
  DType dtype;
};
constexpr DTypeName kDTypes[] = {
    {"F64", DType::F64}, {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16},
    {"I64", DType::I64}, {"I32", DType::I32}, {"I16", DType::I16}, {"I8", DType::I8},
    {"U8", DType::U8},   {"BOOL", DType::BOOL},
};

bool parse_dtype(const std::string& s, DType* out) {
  for (const auto& d : kDTypes)
    if (s == d.name) {
      *out = d.dtype;
      return true;
    }
  return false;
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// nlohmann keeps the last of duplicate keys silently; the spec forbids duplicates, so the parse
// callback tracks the keys of every open object.
nlohmann::json parse_header_json(const char* begin, const char* end, const std::string& where) {
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  auto callback = [&](int /*depth*/, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    switch (event) {
      case nlohmann::json::parse_event_t::object_start:
        open_objects.emplace_back();
        break;
      case nlohmann::json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case nlohmann::json::parse_event_t::key: {
        const auto& key = parsed.get_ref<const std::string&>();
        if (!open_objects.empty() && !open_objects.back().insert(key).second && duplicate.empty())
          duplicate = key;
        break;
      }
      default:
        break;
    }
    return true;
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(begin, end, callback, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const nlohmann::json::exception& e) {
    fail_file(where, "header is not valid JSON: {}", e.what());
  }
  if (!duplicate.empty()) fail_file(where, "header has a duplicate key '{}'", duplicate);
  return j;
}

uint64_t get_u64(const nlohmann::json& v, const std::string& where, const std::string& tensor, const char* what) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) fail_file(where, "tensor '{}': {} has negative value {}", tensor, what, v.get<int64_t>());
  // Only scalars are printed: dumping an arbitrary value would recurse through hostile nesting.
  fail_file(where, "tensor '{}': {} must hold non-negative integers, got {}", tensor, what,
            v.is_number_float() ? v.dump() : std::string("a JSON ") + v.type_name());
}

SafetensorsEntry parse_entry(const std::string& name, const nlohmann::json& v, uint64_t buffer_size,
                             const std::string& where) {
  SafetensorsEntry e;
  e.name = name;
  if (!v.is_object()) fail_file(where, "tensor '{}': entry is not a JSON object", name);

  auto dt = v.find("dtype");
  if (dt == v.end() || !dt->is_string()) fail_file(where, "tensor '{}': missing or non-string 'dtype'", name);
  const auto& dts = dt->get_ref<const std::string&>();
  if (!parse_dtype(dts, &e.dtype))
    fail_file(where, "tensor '{}': unsupported dtype '{}' (supported: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)",
              name, dts);

  auto sh = v.find("shape");
  if (sh == v.end() || !sh->is_array()) fail_file(where, "tensor '{}': missing or non-array 'shape'", name);
  uint64_t numel = 1;
  for (const auto& d : *sh) {
    const uint64_t dim = get_u64(d, where, name, "shape");
    if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail_file(where, "tensor '{}': dimension {} is too large", name, dim);
    e.shape.push_back(static_cast<int64_t>(dim));
    if (__builtin_mul_overflow(numel, dim, &numel) ||
        numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail_file(where, "tensor '{}': shape {} overflows the element count", name, shape_str(e.shape));
  }
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(e.dtype)), &nbytes))
    fail_file(where, "tensor '{}': shape {} overflows the byte size", name, shape_str(e.shape));

  auto off = v.find("data_offsets");
  if (off == v.end() || !off->is_array() || off->size() != 2)
    fail_file(where, "tensor '{}': missing 'data_offsets' or not a [begin, end] pair", name);
  e.begin = get_u64((*off)[0], where, name, "data_offsets");
  e.end = get_u64((*off)[1], where, name, "data_offsets");
  if (e.end < e.begin) fail_file(where, "tensor '{}': data_offsets [{}, {}] end before begin", name, e.begin, e.end);
  if (e.end - e.begin != nbytes)
    fail_file(where, "tensor '{}': data_offsets [{}, {}] span {} bytes but dtype {} x shape {} needs {} bytes", name,
              e.begin, e.end, e.end - e.begin, dts, shape_str(e.shape), nbytes);
  if (e.end > buffer_size)
    fail_file(where, "tensor '{}': data_offsets [{}, {}] out of range of the {}-byte data buffer", name, e.begin,
              e.end, buffer_size);
  return e;
}

}  // namespace

SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, size_t available, uint64_t file_size,
                                           const std::string& where) {
  if (available > file_size) fail_file(where, "internal error: {} bytes given for a {}-byte file", available, file_size);
  if (file_size < 8)
    fail_file(where, "truncated file: {} bytes, shorter than the 8-byte header length", file_size);
  if (available < 8) fail_file(where, "internal error: header length not available");
  const uint64_t n = read_u64_le(bytes);
  if (n > file_size - 8)
    fail_file(where, "header length {} past end of file (file has {} bytes after the length field; truncated file?)",
              n, file_size - 8);
  if (n > kMaxHeaderBytes) fail_file(where, "header length {} exceeds the {}-byte limit", n, kMaxHeaderBytes);
  if (n > available - 8) fail_file(where, "internal error: header not fully available");
  const char* hb = reinterpret_cast<const char*>(bytes + 8);
  if (n == 0 || hb[0] != '{') fail_file(where, "header does not start with '{{' (not a safetensors file?)");

  // nlohmann's lexer takes a NUL byte for the end of input and would ignore whatever follows it.
  if (std::memchr(hb, '\0', n) != nullptr)
    fail_file(where, "header is not valid JSON: it contains a NUL byte (padding must be spaces)");
  const nlohmann::json j = parse_header_json(hb, hb + n, where);
  if (!j.is_object()) fail_file(where, "header is not a JSON object");

  SafetensorsHeader h;
  h.data_start = 8 + n;
  const uint64_t buffer_size = file_size - h.data_start;
  for (const auto& [key, value] : j.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) fail_file(where, "'__metadata__' is not a JSON object");
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) fail_file(where, "'__metadata__' value for '{}' is not a string", mk);
        h.metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    h.entries.push_back(parse_entry(key, value, buffer_size, where));
  }

  std::sort(h.entries.begin(), h.entries.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  // The spec requires the buffer to be covered exactly, without holes: bytes no tensor owns could
  // smuggle another file format (polyglots), and overlaps would alias tensors.
  uint64_t covered = 0;
  const SafetensorsEntry* prev = nullptr;
  for (const auto& e : h.entries) {
    if (e.begin < covered)
      fail_file(where, "overlapping data_offsets: tensor '{}' [{}, {}] overlaps tensor '{}' [{}, {}]", e.name, e.begin,
                e.end, prev->name, prev->begin, prev->end);
    if (e.begin > covered)
      fail_file(where, "hole in the data buffer: bytes [{}, {}) before tensor '{}' belong to no tensor", covered,
                e.begin, e.name);
    covered = e.end;
    prev = &e;
  }
  if (covered != buffer_size)
    fail_file(where, "data buffer has {} bytes but the tensors cover only {} (trailing bytes belong to no tensor)",
              buffer_size, covered);
  return h;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : map_(path) {
  header_ = parse_safetensors_header(map_.data(), map_.size(), map_.size(), path);
  for (size_t i = 0; i < header_.entries.size(); ++i) index_[header_.entries[i].name] = i;
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail_file(path(), "no tensor named '{}'", name);
  return header_.entries[it->second];
}

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // ordered_json keeps the header in layout order, which makes files easy to inspect by eye.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    auto& m = header["__metadata__"] = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
  }
  std::set<std::string> seen;
  std::vector<uint64_t> sizes;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (t.name == "__metadata__") fail_file(path, "a tensor cannot be named '__metadata__'");
    if (!seen.insert(t.name).second) fail_file(path, "duplicate tensor name '{}'", t.name);
    const uint64_t esize = dtype_size(t.dtype);
    if (esize == 0) fail_file(path, "tensor '{}': dtype {} cannot be stored in safetensors", t.name, dtype_name(t.dtype));
    uint64_t n = esize;
    for (auto d : t.shape) {
      if (d < 0) fail_file(path, "tensor '{}': negative dimension in shape {}", t.name, shape_str(t.shape));
      if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n))
        fail_file(path, "tensor '{}': shape {} overflows", t.name, shape_str(t.shape));
    }
    if (n > 0 && t.data == nullptr) fail_file(path, "tensor '{}': no data", t.name);
    nlohmann::ordered_json e;
    e["dtype"] = dtype_name(t.dtype);
    e["shape"] = t.shape;
    e["data_offsets"] = {offset, offset + n};
    header[t.name] = std::move(e);
    sizes.push_back(n);
    offset += n;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    fail_file(path, "cannot encode the header (tensor or metadata names must be UTF-8): {}", e.what());
  }
  // Padding the header to 8 bytes keeps every tensor as aligned as its offset within the buffer.
  text.append((8 - text.size() % 8) % 8, ' ');

  write_file_atomically(path, [&](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary);
    if (!out) fail_file(tmp, "cannot open for writing");
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (size_t i = 0; i < tensors.size(); ++i)
      if (sizes[i] > 0) out.write(static_cast<const char*>(tensors[i].data), static_cast<std::streamsize>(sizes[i]));
    out.close();
    if (!out) fail_file(path, "write failed (disk full?)");
  });
}

}  // namespace toga
