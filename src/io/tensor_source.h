// The seam between checkpoint formats and the model: every format (HF safetensors, GGUF,
// llama2.c) presents its tensors under Hugging Face Llama names with HF shapes, decodable to fp32.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace toga {

enum class DType { F32, F16, BF16, F64, I8, U8, I16, I32, I64, BOOL,
                   // GGUF block formats (decoded, never stored raw in a torch tensor)
                   Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, Q2_K, Q3_K, Q8_K };

const char* dtype_name(DType t);
// Bytes per element for plain dtypes; 0 for block formats.
size_t dtype_size(DType t);

struct TensorInfo {
  std::string name;           // HF name, e.g. "model.layers.0.self_attn.q_proj.weight"
  DType dtype = DType::F32;   // storage type in the file
  std::vector<int64_t> shape; // HF (PyTorch) order, row-major: [out, in] for linear weights
  std::string file;           // the file it lives in, for error messages

  int64_t numel() const;
};

class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual std::vector<TensorInfo> tensors() const = 0;
  bool has(const std::string& name) const;
  TensorInfo info(const std::string& name) const;  // throws naming the checkpoint if absent
  // Decodes the tensor into dst (numel floats, row-major HF layout).
  virtual void read_f32(const std::string& name, float* dst) const = 0;
  // Decodes rows [row_begin, row_begin + n_rows) into dst, exactly as read_f32 would place them; a
  // row is everything under one index of the first dimension (one element of a 1-D tensor). With
  // these a loader converts a large tensor a chunk at a time instead of holding it all as fp32.
  // The default decodes the whole tensor and copies the rows out: correct for any source, cheap
  // for small tensors only, so loaders read in chunks only where row_reads() says so.
  virtual void read_f32_rows(const std::string& name, int64_t row_begin, int64_t n_rows, float* dst) const;
  // True when read_f32_rows decodes only the rows asked for.
  virtual bool row_reads(const std::string& /*name*/) const { return false; }
  // The tensor's stored bytes exactly as in the file (integer tensors: packed codes, permutations).
  // Formats that only decode (GGUF, llama2.c) throw.
  virtual std::vector<uint8_t> read_bytes(const std::string& name) const;
  // Hint that the tensor's storage is no longer needed (lets the loader drop mapped pages).
  virtual void release(const std::string& /*name*/) const {}
  // The same hint for rows already read, so that mapped pages go while a large tensor is converted.
  virtual void release_rows(const std::string& /*name*/, int64_t /*row_begin*/, int64_t /*n_rows*/) const {}
  virtual std::string description() const = 0;  // e.g. the directory or file loaded
};

std::string shape_str(const std::vector<int64_t>& shape);

// Rows of a tensor of this shape as read_f32_rows counts them (1 for a scalar), and their length.
int64_t tensor_rows(const std::vector<int64_t>& shape);
int64_t tensor_row_length(const std::vector<int64_t>& shape);
// Throws naming `where` and the tensor unless [row_begin, row_begin + n_rows) lies within its rows.
void check_row_range(const std::string& where, const TensorInfo& info, int64_t row_begin, int64_t n_rows);

// Drops the whole pages inside [p, p + length) from the resident set. Only for a read-only file
// mapping (the kernel reads dropped pages again from the file when touched): on anonymous or heap
// memory this would discard data.
void release_mapped_pages(const void* p, size_t length);

}  // namespace toga

#include <map>

namespace toga {

// Tensors held in memory as fp32 under HF names: checkpoints built by tests and by compression
// methods before they are written out.
class MemoryTensorSource : public TensorSource {
 public:
  explicit MemoryTensorSource(std::string description = "<memory>") : description_(std::move(description)) {}
  void add(const std::string& name, std::vector<int64_t> shape, std::vector<float> values);
  std::vector<TensorInfo> tensors() const override;
  void read_f32(const std::string& name, float* dst) const override;
  void read_f32_rows(const std::string& name, int64_t row_begin, int64_t n_rows, float* dst) const override;
  bool row_reads(const std::string& /*name*/) const override { return true; }
  std::string description() const override { return description_; }
  const std::vector<float>& values(const std::string& name) const;

 private:
  std::string description_;
  std::map<std::string, std::pair<TensorInfo, std::vector<float>>> tensors_;
};

}  // namespace toga
