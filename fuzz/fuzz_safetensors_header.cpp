// libFuzzer target for the safetensors header parser: the input is a whole file. A toga::Error is
// the expected answer to a bad file; a crash, sanitizer report, hang or any other exception is a
// finding.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstdio>

#include "io/safetensors.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const toga::SafetensorsHeader h = toga::parse_safetensors_header(data, size, size, "fuzz-input");
    // What was accepted must be usable as-is: every tensor inside the file, in order, no overlap.
    uint64_t prev_end = 0;
    for (const auto& e : h.entries) {
      if (e.begin < prev_end || e.end < e.begin || h.data_start + e.end > size) std::abort();
      uint64_t numel = 1;
      for (auto d : e.shape) {
        if (d < 0) std::abort();
        numel *= static_cast<uint64_t>(d);
      }
      if (numel * toga::dtype_size(e.dtype) != e.end - e.begin) std::abort();
      prev_end = e.end;
    }
    if (h.data_start + prev_end != size) std::abort();
  } catch (const toga::Error&) {
    // expected for malformed input
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unexpected exception: %s\n", e.what());
    std::abort();
  }
  return 0;
}
