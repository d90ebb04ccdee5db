// libFuzzer target for the GGUF reader: parsing, every getter, dequantization of the tensors it
// accepted and the config mapping must either succeed or throw toga::Error — never crash, hang or
// read outside the input.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "io/gguf.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::unique_ptr<toga::GGUFFile> f;
  try {
    f = toga::GGUFFile::parse(data, size, "fuzz-input");
  } catch (const toga::Error&) {
    return 0;
  }
  for (const auto& [key, value] : f->metadata()) {
    // Each getter either returns or rejects the type; both are fine.
    try { f->get_string(key); } catch (const toga::Error&) {}
    try { f->get_int(key); } catch (const toga::Error&) {}
    try { f->get_float(key); } catch (const toga::Error&) {}
    try { f->get_bool(key); } catch (const toga::Error&) {}
    try { f->get_string_array(key); } catch (const toga::Error&) {}
    try { f->get_int_array(key); } catch (const toga::Error&) {}
    try { f->get_float_array(key); } catch (const toga::Error&) {}
    (void)toga::gguf_value_type_name(value);
  }
  (void)f->to_json(4).dump();
  std::vector<float> out;
  for (const auto& t : f->tensors()) {
    if (t.numel() > (int64_t(1) << 20)) continue;  // bounded by the input size anyway; keep runs fast
    out.resize(static_cast<size_t>(t.numel()));
    try {
      f->read_f32(t, out.data());
    } catch (const toga::Error&) {
    }
  }
  try {
    (void)toga::gguf_model_config(*f);
  } catch (const toga::Error&) {
  }
  return 0;
}
