#include "io/tensor_source.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "util/error.h"

namespace toga {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F64: return "F64";
    case DType::I8: return "I8";
    case DType::U8: return "U8";
    case DType::I16: return "I16";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    case DType::BOOL: return "BOOL";
    case DType::Q4_0: return "Q4_0";
    case DType::Q4_1: return "Q4_1";
    case DType::Q5_0: return "Q5_0";
    case DType::Q5_1: return "Q5_1";
    case DType::Q8_0: return "Q8_0";
    case DType::Q4_K: return "Q4_K";
    case DType::Q5_K: return "Q5_K";
    case DType::Q6_K: return "Q6_K";
    case DType::Q2_K: return "Q2_K";
    case DType::Q3_K: return "Q3_K";
    case DType::Q8_K: return "Q8_K";
  }
  return "?";
}

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: case DType::I16: return 2;
    case DType::F64: case DType::I64: return 8;
    case DType::I8: case DType::U8: case DType::BOOL: return 1;
    default: return 0;
  }
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

bool TensorSource::has(const std::string& name) const {
  for (const auto& t : tensors())
    if (t.name == name) return true;
  return false;
}

TensorInfo TensorSource::info(const std::string& name) const {
  for (const auto& t : tensors())
    if (t.name == name) return t;
  fail_file(description(), "missing tensor '{}'", name);
}

std::vector<uint8_t> TensorSource::read_bytes(const std::string& name) const {
  fail_file(description(), "tensor '{}': this checkpoint format has no raw tensor bytes", name);
}

void TensorSource::read_f32_rows(const std::string& name, int64_t row_begin, int64_t n_rows, float* dst) const {
  const TensorInfo t = info(name);
  check_row_range(t.file.empty() ? description() : t.file, t, row_begin, n_rows);
  if (row_begin == 0 && n_rows == tensor_rows(t.shape)) return read_f32(name, dst);
  std::vector<float> all(static_cast<size_t>(t.numel()));
  read_f32(name, all.data());
  const int64_t cols = tensor_row_length(t.shape);
  if (n_rows > 0) std::memcpy(dst, all.data() + row_begin * cols, static_cast<size_t>(n_rows * cols) * sizeof(float));
}

int64_t tensor_rows(const std::vector<int64_t>& shape) { return shape.empty() ? 1 : shape[0]; }

int64_t tensor_row_length(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (size_t i = 1; i < shape.size(); ++i) n *= shape[i];
  return n;
}

void check_row_range(const std::string& where, const TensorInfo& info, int64_t row_begin, int64_t n_rows) {
  const int64_t rows = tensor_rows(info.shape);
  if (row_begin < 0 || n_rows < 0 || row_begin > rows || n_rows > rows - row_begin)
    fail_file(where, "tensor '{}' of shape {}: rows [{}, {}) are out of range", info.name, shape_str(info.shape),
              row_begin, row_begin + n_rows);
}

void release_mapped_pages(const void* p, size_t length) {
  if (!p || length == 0) return;
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t begin = (a + page - 1) / page * page, end = (a + length) / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace toga

#include <cstring>

namespace toga {

void MemoryTensorSource::add(const std::string& name, std::vector<int64_t> shape, std::vector<float> values) {
  TensorInfo info{name, DType::F32, std::move(shape), description_};
  if (static_cast<int64_t>(values.size()) != info.numel())
    fail("MemoryTensorSource: tensor '{}' has {} values for shape {}", name, values.size(), shape_str(info.shape));
  tensors_[name] = {std::move(info), std::move(values)};
}

std::vector<TensorInfo> MemoryTensorSource::tensors() const {
  std::vector<TensorInfo> out;
  for (const auto& [name, t] : tensors_) out.push_back(t.first);
  return out;
}

const std::vector<float>& MemoryTensorSource::values(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail_file(description_, "missing tensor '{}'", name);
  return it->second.second;
}

void MemoryTensorSource::read_f32(const std::string& name, float* dst) const {
  const auto& v = values(name);
  std::memcpy(dst, v.data(), v.size() * sizeof(float));
}

void MemoryTensorSource::read_f32_rows(const std::string& name, int64_t row_begin, int64_t n_rows, float* dst) const {
  const auto& v = values(name);
  const TensorInfo& t = tensors_.at(name).first;
  check_row_range(description_, t, row_begin, n_rows);
  const int64_t cols = tensor_row_length(t.shape);
  if (n_rows > 0) std::memcpy(dst, v.data() + row_begin * cols, static_cast<size_t>(n_rows * cols) * sizeof(float));
}

}  // namespace toga
