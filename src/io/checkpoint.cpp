#include "io/checkpoint.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "util/error.h"

namespace fs = std::filesystem;

namespace toga {

Checkpoint open_checkpoint(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) fail_file(path, "no such file or directory");
  if (fs::is_directory(path, ec)) return open_hf_checkpoint(path);
  char magic[4] = {0, 0, 0, 0};
  {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail_file(path, "cannot open for reading");
    in.read(magic, 4);
  }
  if (std::memcmp(magic, "GGUF", 4) == 0) return open_gguf_checkpoint(path);
  const std::string ext = fs::path(path).extension().string();
  if (ext == ".gguf") fail_file(path, "named .gguf but does not start with the GGUF magic");
  if (ext == ".safetensors")
    fail_file(path, "a bare safetensors file has no config: pass the directory holding config.json");
  if (ext == ".bin") return open_llama2c_checkpoint(path);
  fail_file(path, "unrecognised checkpoint (expected an HF directory, a .gguf file or a llama2.c .bin)");
}

}  // namespace toga
