// Read-only memory map of a whole file. Loaders read tensors straight from the map and drop the
// pages they are done with, so loading never holds the file and the converted weights at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace toga {

class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // Tell the kernel the byte range [offset, offset+length) is no longer needed (drops it from RSS).
  void release(size_t offset, size_t length) const;

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace toga
