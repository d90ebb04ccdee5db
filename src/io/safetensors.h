// The safetensors format, read and written exactly as published: 8-byte little-endian header length
// N, N bytes of JSON header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {..}},
// then the data buffer; offsets are relative to the buffer's start. Nothing in a file is trusted.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/tensor_source.h"
#include "util/mapped_file.h"

namespace toga {

struct SafetensorsEntry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // relative to the data buffer
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;  // sorted by begin offset
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // absolute file offset of the data buffer
};

// Parses and validates a header from the first bytes of a file of `file_size` bytes (the fuzzer
// calls this directly). `where` names the file in errors.
SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, size_t available, uint64_t file_size,
                                           const std::string& where);

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  const SafetensorsHeader& header() const { return header_; }
  const SafetensorsEntry& entry(const std::string& name) const;
  const uint8_t* data(const SafetensorsEntry& e) const { return map_.data() + header_.data_start + e.begin; }
  void release(const SafetensorsEntry& e) const { map_.release(header_.data_start + e.begin, e.end - e.begin); }
  const std::string& path() const { return map_.path(); }

 private:
  MappedFile map_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;
};

struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;  // dtype_size(dtype) * numel bytes
};

// Writes atomically (temporary name, then rename); tensors are laid out in the given order, the
// header padded with spaces to a multiple of 8 bytes.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace toga
