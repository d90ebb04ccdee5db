#include "model/save.h"

#include <cstring>

#include "util/error.h"

namespace toga {

std::vector<uint8_t> tensor_bytes(const torch::Tensor& t) {
  const auto c = t.to(torch::kCPU).contiguous();
  std::vector<uint8_t> out(c.numel() * c.element_size());
  if (!out.empty()) std::memcpy(out.data(), c.data_ptr(), out.size());
  return out;
}

DType safetensors_dtype(torch::Dtype d) {
  if (d == torch::kFloat32) return DType::F32;
  if (d == torch::kBFloat16) return DType::BF16;
  if (d == torch::kFloat16) return DType::F16;
  if (d == torch::kUInt8) return DType::U8;
  if (d == torch::kInt32) return DType::I32;
  if (d == torch::kLong) return DType::I64;
  fail("no safetensors dtype for torch dtype {}", c10::toString(d));
}

torch::Dtype torch_float_dtype(DType d) {
  switch (d) {
    case DType::F32: return torch::kFloat32;
    case DType::BF16: return torch::kBFloat16;
    case DType::F16: return torch::kFloat16;
    default: fail("unsupported storage dtype {} (use F32, BF16 or F16)", dtype_name(d));
  }
}

void save_model(const std::string& dir, const Model& model, DType dtype, const HFWriteOptions& options) {
  const torch::Dtype tdt = torch_float_dtype(dtype);
  for (const auto* s : model.block_sites())
    if (s->act.active() || s->kernel)
      fail("site '{}' is quantized: save the model with save_quantized_checkpoint", s->name);
  std::vector<std::vector<uint8_t>> storage;
  std::vector<TensorToWrite> tensors;
  for (const auto& [name, t] : model.named_tensors()) {
    const auto stored = is_index_tensor(name) ? t.to(torch::kInt32) : t.to(tdt);
    storage.push_back(tensor_bytes(stored));
    tensors.push_back({name, safetensors_dtype(stored.scalar_type()), stored.sizes().vec(), storage.back().data()});
  }
  ModelConfig c = model.current_config();
  c.torch_dtype = dtype == DType::F32 ? "float32" : dtype == DType::BF16 ? "bfloat16" : "float16";
  write_hf_checkpoint(dir, c, tensors, options);
}

}  // namespace toga
