// Hugging Face checkpoint directories: config.json plus model.safetensors, or shards listed in
// model.safetensors.index.json.
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/half.h"

namespace fs = std::filesystem;

namespace toga {

namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

nlohmann::json read_json_file(const std::string& path) {
  const std::string text = read_text_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail_file(path, "invalid JSON: {}", e.what());
  }
}

// Names taken from an index or from a caller end up joined to the directory; anything that is not
// a plain file name could point outside it.
bool is_plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\\') == std::string::npos && name.find('\0') == std::string::npos;
}

template <typename Decode>
void decode_elements(const uint8_t* src, float* dst, int64_t n, size_t esize, Decode decode) {
  // Mapped tensor data is only as aligned as its offset in the file, so elements are copied out.
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) dst[i] = decode(src + static_cast<size_t>(i) * esize);
}

class HFTensorSource : public TensorSource {
 public:
  explicit HFTensorSource(std::string dir) : dir_(std::move(dir)) {}

  void add_shard(std::unique_ptr<SafetensorsFile> f) { shards_.push_back(std::move(f)); }
  const std::vector<std::unique_ptr<SafetensorsFile>>& shards() const { return shards_; }

  void add_tensor(const std::string& name, size_t shard) {
    const SafetensorsEntry& e = shards_[shard]->entry(name);
    TensorInfo t;
    t.name = name;
    t.dtype = e.dtype;
    t.shape = e.shape;
    t.file = shards_[shard]->path();
    index_[name] = {shard, &e};
    infos_.push_back(std::move(t));
  }

  std::vector<TensorInfo> tensors() const override { return infos_; }

  void read_f32(const std::string& name, float* dst) const override {
    const Slot& s = slot(name);
    const int64_t n = static_cast<int64_t>((s.entry->end - s.entry->begin) / dtype_size(s.entry->dtype));
    decode(name, s, 0, n, dst);
  }

  void read_f32_rows(const std::string& name, int64_t row_begin, int64_t n_rows, float* dst) const override {
    const Slot& s = slot(name);
    check_row_range(shards_[s.shard]->path(), info_of(s), row_begin, n_rows);
    const int64_t cols = tensor_row_length(s.entry->shape);
    decode(name, s, row_begin * cols, n_rows * cols, dst);
  }

  bool row_reads(const std::string& /*name*/) const override { return true; }

  void release_rows(const std::string& name, int64_t row_begin, int64_t n_rows) const override {
    const Slot& s = slot(name);
    const size_t esize = dtype_size(s.entry->dtype), cols = static_cast<size_t>(tensor_row_length(s.entry->shape));
    release_mapped_pages(shards_[s.shard]->data(*s.entry) + static_cast<size_t>(row_begin) * cols * esize,
                         static_cast<size_t>(n_rows) * cols * esize);
  }

  std::vector<uint8_t> read_bytes(const std::string& name) const override {
    const Slot& s = slot(name);
    const uint8_t* src = shards_[s.shard]->data(*s.entry);
    return std::vector<uint8_t>(src, src + (s.entry->end - s.entry->begin));
  }

  void release(const std::string& name) const override {
    const Slot& s = slot(name);
    shards_[s.shard]->release(*s.entry);
  }

  std::string description() const override { return dir_; }

 private:
  struct Slot {
    size_t shard;
    const SafetensorsEntry* entry;
  };
  TensorInfo info_of(const Slot& s) const {
    return TensorInfo{s.entry->name, s.entry->dtype, s.entry->shape, shards_[s.shard]->path()};
  }

  // Elements [begin, begin + n) of the tensor, decoded to fp32.
  void decode(const std::string& name, const Slot& s, int64_t begin, int64_t n, float* dst) const {
    const SafetensorsFile& f = *shards_[s.shard];
    const SafetensorsEntry& e = *s.entry;
    const uint8_t* src = f.data(e) + static_cast<size_t>(begin) * dtype_size(e.dtype);
    switch (e.dtype) {
      case DType::F32:
        if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
        break;
      case DType::F16:
        decode_elements(src, dst, n, 2, [](const uint8_t* p) {
          uint16_t h;
          std::memcpy(&h, p, 2);
          return fp16_to_float(h);
        });
        break;
      case DType::BF16:
        decode_elements(src, dst, n, 2, [](const uint8_t* p) {
          uint16_t h;
          std::memcpy(&h, p, 2);
          return bf16_to_float(h);
        });
        break;
      case DType::F64:
        decode_elements(src, dst, n, 8, [](const uint8_t* p) {
          double d;
          std::memcpy(&d, p, 8);
          return static_cast<float>(d);
        });
        break;
      default:
        fail_file(f.path(), "tensor '{}' has dtype {}, which cannot be read as floating-point weights", name,
                  dtype_name(e.dtype));
    }
  }

  const Slot& slot(const std::string& name) const {
    auto it = index_.find(name);
    if (it == index_.end()) fail_file(dir_, "missing tensor '{}'", name);
    return it->second;
  }

  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::vector<TensorInfo> infos_;
  std::map<std::string, Slot> index_;
};

std::unique_ptr<HFTensorSource> open_single(const std::string& dir, const std::string& path) {
  auto src = std::make_unique<HFTensorSource>(dir);
  src->add_shard(std::make_unique<SafetensorsFile>(path));
  for (const auto& e : src->shards()[0]->header().entries) src->add_tensor(e.name, 0);
  return src;
}

std::unique_ptr<HFTensorSource> open_sharded(const std::string& dir, const std::string& index_path) {
  const nlohmann::json index = read_json_file(index_path);
  if (!index.is_object()) fail_file(index_path, "index is not a JSON object");
  auto wm = index.find("weight_map");
  if (wm == index.end() || !wm->is_object()) fail_file(index_path, "missing or non-object 'weight_map'");
  if (wm->empty()) fail_file(index_path, "'weight_map' lists no tensors");

  std::map<std::string, std::string> weight_map;
  std::set<std::string> shard_files;
  for (const auto& [name, file] : wm->items()) {
    if (!file.is_string()) fail_file(index_path, "weight_map entry for '{}' is not a file name", name);
    const std::string f = file.get<std::string>();
    if (!is_plain_file_name(f))
      fail_file(index_path, "weight_map entry for '{}' names '{}', which is not a file in this directory", name, f);
    weight_map[name] = f;
    shard_files.insert(f);
  }
  // In file-name order, so that shards (and error messages) come in their numbered order.
  const std::vector<std::string> shard_names(shard_files.begin(), shard_files.end());

  auto src = std::make_unique<HFTensorSource>(dir);
  for (const auto& f : shard_names) {
    const std::string path = (fs::path(dir) / f).string();
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) fail_file(index_path, "missing shard '{}' listed in the weight_map", f);
    src->add_shard(std::make_unique<SafetensorsFile>(path));
  }

  // Every tensor must live in exactly the shard the index names; a name stored twice would make
  // the loaded weights depend on which copy a reader happens to pick.
  std::map<std::string, size_t> found;
  for (size_t s = 0; s < shard_names.size(); ++s) {
    const SafetensorsFile& shard = *src->shards()[s];
    for (const auto& e : shard.header().entries) {
      auto [it, fresh] = found.emplace(e.name, s);
      if (!fresh)
        fail_file(shard.path(), "tensor '{}' is also stored in shard '{}' (the same name in two shards)", e.name,
                  shard_names[it->second]);
    }
  }
  for (const auto& [name, s] : found) {
    const std::string& path = src->shards()[s]->path();
    auto mapped = weight_map.find(name);
    if (mapped == weight_map.end())
      fail_file(path, "tensor '{}' is not listed in the weight_map of {}", name, kIndexFile);
    if (mapped->second != shard_names[s])
      fail_file(path, "tensor '{}' is stored here but the weight_map places it in '{}'", name, mapped->second);
  }
  for (const auto& [name, f] : weight_map) {
    if (!found.count(name))
      fail_file((fs::path(dir) / f).string(), "tensor '{}' listed in the weight_map is not in this shard", name);
  }
  for (size_t s = 0; s < shard_names.size(); ++s)
    for (const auto& e : src->shards()[s]->header().entries) src->add_tensor(e.name, s);
  return src;
}

void write_json(const std::string& path, const nlohmann::json& j) {
  std::string text;
  try {
    text = j.dump(2) + "\n";
  } catch (const nlohmann::json::exception& e) {
    fail_file(path, "cannot encode JSON: {}", e.what());
  }
  write_text_atomically(path, text);
}

}  // namespace

Checkpoint open_hf_checkpoint(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail_file(dir, "not a directory");
  const std::string config_path = (fs::path(dir) / "config.json").string();
  if (!fs::is_regular_file(config_path, ec)) fail_file(dir, "no config.json (not a Hugging Face checkpoint directory)");
  const nlohmann::json cj = read_json_file(config_path);

  Checkpoint ck;
  ck.path = dir;
  ck.format = "hf";
  ck.config = ModelConfig::from_hf_json(cj, config_path);
  if (cj.is_object() && cj.contains("quantization_config")) ck.quantization_config = cj["quantization_config"];

  const std::string single = (fs::path(dir) / kSingleFile).string();
  const std::string index = (fs::path(dir) / kIndexFile).string();
  std::unique_ptr<HFTensorSource> src;
  // transformers looks for the single file first; follow it so both tools load the same weights.
  if (fs::exists(single, ec)) {
    src = open_single(dir, single);
  } else if (fs::exists(index, ec)) {
    src = open_sharded(dir, index);
  } else if (fs::exists(fs::path(dir) / "pytorch_model.bin", ec) ||
             fs::exists(fs::path(dir) / "pytorch_model.bin.index.json", ec)) {
    fail_file(dir, "only PyTorch pickle weights (pytorch_model.bin), which are not supported: convert them to "
                   "safetensors");
  } else {
    fail_file(dir, "no {} or {}", kSingleFile, kIndexFile);
  }
  // A quantized checkpoint stores packed codes instead of weights; its own reader checks them.
  if (ck.quantization_config.is_null()) check_tensors_match_config(*src, ck.config);
  ck.tensors = std::move(src);
  return ck;
}

void write_hf_checkpoint(const std::string& dir, const ModelConfig& config, const std::vector<TensorToWrite>& tensors,
                         const HFWriteOptions& options) {
  nlohmann::json cj = config.to_hf_json();
  if (!options.extra_config.is_null()) {
    if (!options.extra_config.is_object()) fail_file(dir, "extra config must be a JSON object");
    cj.update(options.extra_config);
  }
  for (const auto& [name, content] : options.extra_files) {
    (void)content;
    if (!is_plain_file_name(name)) fail_file(dir, "extra file name '{}' is not a plain file name", name);
    const bool weights = name.size() >= 12 && name.compare(name.size() - 12, 12, ".safetensors") == 0;
    if (name == "config.json" || name == kIndexFile || name == kOutputMarker || weights)
      fail_file(dir, "extra file '{}' would overwrite the checkpoint's own files", name);
  }
  std::set<std::string> names;
  for (const auto& t : tensors)
    if (!names.insert(t.name).second) fail_file(dir, "duplicate tensor name '{}'", t.name);

  // Greedy packing in the given order keeps related tensors (a layer's weights) together.
  std::vector<std::vector<TensorToWrite>> shards(1);
  std::vector<uint64_t> shard_bytes(1, 0);
  uint64_t total = 0;
  for (const auto& t : tensors) {
    uint64_t n = dtype_size(t.dtype);
    for (auto d : t.shape) n *= static_cast<uint64_t>(std::max<int64_t>(d, 0));
    total += n;
    if (!shards.back().empty() && shard_bytes.back() + n > options.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes.push_back(0);
    }
    shards.back().push_back(t);
    shard_bytes.back() += n;
  }

  write_dir_atomically(dir, options.output, [&](const std::string& tmp) {
    write_json((fs::path(tmp) / "config.json").string(), cj);
    if (shards.size() == 1) {
      write_safetensors((fs::path(tmp) / kSingleFile).string(), shards[0], options.metadata);
    } else {
      nlohmann::json index;
      index["metadata"] = {{"total_size", total}};
      nlohmann::json& wm = index["weight_map"] = nlohmann::json::object();
      for (size_t i = 0; i < shards.size(); ++i) {
        const std::string name = fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards.size());
        write_safetensors((fs::path(tmp) / name).string(), shards[i], options.metadata);
        for (const auto& t : shards[i]) wm[t.name] = name;
      }
      write_json((fs::path(tmp) / kIndexFile).string(), index);
    }
    for (const auto& [name, content] : options.extra_files) write_text_atomically((fs::path(tmp) / name).string(), content);
  });
}

}  // namespace toga
