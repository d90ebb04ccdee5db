#include "quant/format.h"

#include "quant/packed_kernel.h"

#include <cstring>
#include <set>

#include "util/error.h"
#include "util/half.h"
#include "model/save.h"
#include "quant/plan.h"
#include "quant/transforms.h"

namespace toga {

namespace {

std::string hf_prefix(const std::string& site) { return "model." + site; }

// Site names of the block linears, with their HF weight shapes.
std::map<std::string, std::vector<int64_t>> block_linear_shapes(const ModelConfig& c) {
  std::map<std::string, std::vector<int64_t>> out;
  for (const auto& [name, shape] : expected_tensors(c)) {
    static const std::set<std::string> kinds = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"};
    const std::string suffix = ".weight";
    if (name.rfind("model.layers.", 0) != 0 || name.size() < suffix.size() ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    const std::string stem = name.substr(0, name.size() - suffix.size());
    const std::string kind = stem.substr(stem.rfind('.') + 1);
    if (kinds.count(kind)) out[stem.substr(std::strlen("model."))] = shape;
  }
  return out;
}

// A tensor read as stored bytes, checked against the expected dtype and shape.
torch::Tensor read_stored(const TensorSource& src, const std::string& name, DType dtype,
                          const std::vector<int64_t>& shape, torch::Dtype torch_dtype) {
  const TensorInfo info = src.info(name);
  const std::string where = info.file.empty() ? src.description() : info.file;
  if (info.dtype != dtype)
    fail_file(where, "tensor '{}' has dtype {}, expected {}", name, dtype_name(info.dtype), dtype_name(dtype));
  if (info.shape != shape)
    fail_file(where, "tensor '{}' has shape {}, expected {}", name, shape_str(info.shape), shape_str(shape));
  const auto bytes = src.read_bytes(name);
  auto t = torch::empty(shape, torch_dtype);
  if (bytes.size() != size_t(t.numel() * t.element_size()))
    fail_file(where, "tensor '{}' holds {} bytes, expected {}", name, bytes.size(), t.numel() * t.element_size());
  if (!bytes.empty()) std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
  return t;
}

// Presents a quantized checkpoint to load_model: each quantized linear's ".weight" is its
// dequantized matrix in stored (permuted) column order; everything else passes through.
class DequantizedSource : public TensorSource {
 public:
  DequantizedSource(const TensorSource& inner, const std::vector<QuantizedLinear>& linears) : inner_(inner) {
    for (const auto& q : linears) weights_[hf_prefix(q.site) + ".weight"] = &q;
  }
  std::vector<TensorInfo> tensors() const override {
    std::vector<TensorInfo> out;
    for (const auto& t : inner_.tensors()) {
      const auto dot = t.name.rfind('.');
      const std::string leaf = dot == std::string::npos ? t.name : t.name.substr(dot + 1);
      if (leaf == "weight_packed" || leaf == "weight_scale" || leaf == "weight_zero_point" || leaf == "weight_levels" ||
          leaf == "weight_column_scale" ||
          leaf == "input_perm")
        continue;
      out.push_back(t);
    }
    for (const auto& [name, q] : weights_)
      out.push_back({name, DType::F32, {q->weight.codes.size(0), q->weight.codes.size(1)}, inner_.description()});
    return out;
  }
  void read_f32(const std::string& name, float* dst) const override {
    auto it = weights_.find(name);
    if (it == weights_.end()) return inner_.read_f32(name, dst);
    const auto w = dequantize(it->second->weight).to(torch::kFloat32).contiguous();
    std::memcpy(dst, w.data_ptr<float>(), w.numel() * sizeof(float));
  }
  void release(const std::string& name) const override {
    if (!weights_.count(name)) inner_.release(name);
  }
  std::vector<uint8_t> read_bytes(const std::string& name) const override {
    if (weights_.count(name)) fail_file(inner_.description(), "tensor '{}' is quantized: no raw float bytes", name);
    return inner_.read_bytes(name);
  }
  std::string description() const override { return inner_.description(); }

 private:
  const TensorSource& inner_;
  std::map<std::string, const QuantizedLinear*> weights_;
};

}  // namespace

int64_t packed_row_bytes(const std::vector<ColumnGroup>& groups) {
  int64_t bits = 0;
  for (const auto& g : groups) bits += (g.col_end - g.col_begin) * g.bits;
  return (bits + 7) / 8;
}

static int group_code_min(const ColumnGroup& g) { return g.bits == 1 || g.codebook ? 0 : -(1 << (g.bits - 1)); }

torch::Tensor pack_codes(const QuantizedWeight& w) {
  const auto codes = w.codes.to(torch::kCPU, torch::kInt8).contiguous();
  const int64_t rows = codes.size(0), in = codes.size(1), row_bytes = packed_row_bytes(w.groups);
  auto packed = torch::zeros({rows, row_bytes}, torch::kUInt8);
  const int8_t* c = codes.data_ptr<int8_t>();
  uint8_t* p = packed.data_ptr<uint8_t>();
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* row = p + r * row_bytes;
    int64_t bit = 0;
    for (const auto& g : w.groups) {
      const int lo = group_code_min(g);
      for (int64_t col = g.col_begin; col < g.col_end; ++col) {
        const uint32_t u = static_cast<uint32_t>(c[r * in + col] - lo);
        for (int b = 0; b < g.bits; ++b, ++bit)
          if ((u >> b) & 1u) row[bit >> 3] |= static_cast<uint8_t>(1u << (bit & 7));
      }
    }
  }
  return packed;
}

torch::Tensor unpack_codes(const torch::Tensor& packed, const std::vector<ColumnGroup>& groups, int64_t in,
                           const std::string& where) {
  const int64_t rows = packed.size(0), row_bytes = packed_row_bytes(groups);
  if (packed.size(1) != row_bytes) fail_file(where, "packed codes have {} bytes per row, expected {}", packed.size(1), row_bytes);
  auto codes = torch::empty({rows, in}, torch::kInt8);
  const uint8_t* p = packed.data_ptr<uint8_t>();
  int8_t* c = codes.data_ptr<int8_t>();
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = p + r * row_bytes;
    int64_t bit = 0;
    for (const auto& g : groups) {
      const int lo = group_code_min(g);
      for (int64_t col = g.col_begin; col < g.col_end; ++col) {
        uint32_t u = 0;
        for (int b = 0; b < g.bits; ++b, ++bit) u |= static_cast<uint32_t>((row[bit >> 3] >> (bit & 7)) & 1u) << b;
        c[r * in + col] = static_cast<int8_t>(static_cast<int>(u) + lo);
      }
    }
  }
  return codes;
}

// The positions (in the group list) of the groups with a scale and zero point: all but codebooks.
static torch::Tensor affine_group_columns(const std::vector<ColumnGroup>& groups) {
  std::vector<int64_t> idx;
  for (size_t g = 0; g < groups.size(); ++g)
    if (!groups[g].codebook) idx.push_back(int64_t(g));
  return torch::tensor(idx, torch::kLong);
}

static bool same_groups(const std::vector<ColumnGroup>& a, const std::vector<ColumnGroup>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].col_begin != b[i].col_begin || a[i].col_end != b[i].col_end || a[i].bits != b[i].bits ||
        a[i].symmetric != b[i].symmetric || a[i].codebook != b[i].codebook)
      return false;
  return true;
}

static nlohmann::json groups_to_json(const std::vector<ColumnGroup>& groups) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& g : groups)
    j.push_back({{"columns", {g.col_begin, g.col_end}}, {"bits", g.bits}, {"symmetric", g.symmetric}, {"codebook", g.codebook}});
  return j;
}

static std::vector<ColumnGroup> groups_from_json(const nlohmann::json& j, int64_t in, const std::string& where,
                                                 const std::string& stem) {
  std::vector<ColumnGroup> groups;
  try {
    int64_t next = 0;
    for (const auto& e : j) {
      ColumnGroup g;
      g.col_begin = e.at("columns").at(0).get<int64_t>();
      g.col_end = e.at("columns").at(1).get<int64_t>();
      g.bits = e.at("bits").get<int>();
      g.symmetric = e.value("symmetric", true);
      g.codebook = e.value("codebook", false);
      if (g.col_begin != next || g.col_end <= g.col_begin || g.bits < 1 || g.bits > 8)
        fail_file(where, "layer '{}': column groups must be consecutive, non-empty, of 1 to 8 bits", stem);
      next = g.col_end;
      groups.push_back(g);
    }
    if (next != in) fail_file(where, "layer '{}': column groups cover {} of {} columns", stem, next, in);
  } catch (const nlohmann::json::exception& e) {
    fail_file(where, "layer '{}': malformed groups: {}", stem, e.what());
  }
  return groups;
}

LinearStorage save_quantized_checkpoint(const std::string& dir, const Model& model, const QuantizationReport& report,
                                        DType dtype, const QuantizedCheckpointExtras& extras) {
  const ModelConfig c = model.current_config();
  const auto shapes = block_linear_shapes(c);
  std::map<std::string, const QuantizedLinear*> by_weight;
  for (const auto& q : report.linears) {
    if (!shapes.count(q.site)) fail("quantized site '{}' is not a block linear of this model", q.site);
    by_weight[hf_prefix(q.site) + ".weight"] = &q;
  }
  const torch::Dtype tdt = torch_float_dtype(dtype);
  std::vector<std::vector<uint8_t>> storage;
  std::vector<TensorToWrite> tensors;
  LinearStorage linear_bytes;
  auto add = [&](const std::string& name, const torch::Tensor& t, uint64_t* counted = nullptr) {
    storage.push_back(tensor_bytes(t));
    tensors.push_back({name, safetensors_dtype(t.scalar_type()), t.sizes().vec(), storage.back().data()});
    if (counted) *counted += storage.back().size();
  };
  nlohmann::json layers = nlohmann::json::object();
  std::set<std::string> replaced;
  for (const auto& [name, q] : by_weight) replaced.insert(name);
  for (const auto& [name, t] : model.named_tensors(replaced)) {
    auto it = by_weight.find(name);
    if (it == by_weight.end()) {
      if (is_placeholder(t))
        fail("'{}' is held by another process of this layer-sharded run and was not quantized: a layer-sharded "
             "quantization must quantize every block linear", name);
      const bool index = is_index_tensor(name);
      add(name, index ? t.to(torch::kInt32) : t.to(tdt), index ? &linear_bytes.indices : nullptr);
      continue;
    }
    const QuantizedLinear& q = *it->second;
    const std::string stem = name.substr(0, name.size() - std::strlen(".weight"));
    add(stem + ".weight_packed", q.packed_codes.defined() ? q.packed_codes : pack_codes(q.weight), &linear_bytes.codes);
    // Codebook groups store their levels instead of a scale and zero point (docs/FORMAT.md).
    const torch::Tensor affine = affine_group_columns(q.weight.groups);
    if (affine.numel() > 0) {
      add(stem + ".weight_scale", q.weight.scales.index_select(1, affine.to(q.weight.scales.device())).to(torch::kFloat16),
          &linear_bytes.params);
      add(stem + ".weight_zero_point", q.weight.zeros.index_select(1, affine.to(q.weight.zeros.device())).to(torch::kFloat16),
          &linear_bytes.params);
    }
    if (q.weight.has_codebook()) add(stem + ".weight_levels", q.weight.levels.to(torch::kFloat16), &linear_bytes.params);
    if (q.weight.column_scales.defined())
      add(stem + ".weight_column_scale", q.weight.column_scales.to(torch::kFloat16), &linear_bytes.params);
    add(stem + ".input_perm", q.perm.to(torch::kInt32), &linear_bytes.indices);
    layers[stem] = {{"salient", q.salient},
                    {"method", q.method},
                    {"weight_low", quant_spec_to_json(q.weight_low)},
                    {"weight_high", quant_spec_to_json(q.weight_high)},
                    {"act_low", quant_spec_to_json(q.act_low)},
                    {"act_high", quant_spec_to_json(q.act_high)},
                    {"gptq_loss", q.gptq_loss}};
    if (q.sparsity > 0) layers[stem]["sparsity"] = q.sparsity;
    if (!q.sparsity_pattern.empty()) layers[stem]["sparsity_pattern"] = q.sparsity_pattern;
    // Layouts the quantizer specs do not determine (codebook groups, per-group widths) list them.
    if (!same_groups(q.weight.groups, column_groups(q.in_features(), q.salient, q.weight_low, q.weight_high)))
      layers[stem]["groups"] = groups_to_json(q.weight.groups);
    if (!q.transform.empty()) layers[stem]["transform"] = transform_to_json(q);
  }
  const Plan& plan = report.plan;
  nlohmann::json kv = nullptr;
  if (plan.kv.quantized())
    kv = {{"num_bits", plan.kv.bits}, {"type", "int"}, {"symmetric", plan.kv.symmetric},
          {"strategy", "token-head"}, {"group_size", c.head_dim}, {"clip_ratio", plan.kv.clip_ratio}};
  nlohmann::json qc = {{"quant_method", "toga"},
                       {"format", "toga-mixed-packed"},
                       {"format_version", kQuantFormatVersion},
                       {"recipe", plan.recipe},
                       {"gptq", {{"damp", plan.gptq.damp}, {"block_size", plan.gptq.block_size},
                                 {"act_order", plan.gptq.act_order}, {"true_sequential", plan.gptq.true_sequential}}},
                       {"provenance", plan.provenance},
                       {"kv_cache_scheme", kv},
                       {"ignore", {"lm_head", "model.embed_tokens"}},
                       {"average_bits", {{"weight_codes", report.weight_bits_codes},
                                         {"weight_total", report.weight_bits_total},
                                         {"activations", report.act_bits}}},
                       {"scheme", scheme_name(report)},
                       {"storage", linear_bytes.to_json()},
                       {"base_model", extras.base_model},
                       {"layers", layers}};
  ModelConfig out_config = c;
  out_config.torch_dtype = dtype == DType::F32 ? "float32" : dtype == DType::BF16 ? "bfloat16" : "float16";
  HFWriteOptions wo;
  wo.extra_config = {{"quantization_config", qc}};
  wo.extra_files = extras.files;
  wo.output = {"quantize", extras.on_existing};
  write_hf_checkpoint(dir, out_config, tensors, wo);
  return linear_bytes;
}

std::vector<QuantizedLinear> read_quantized_linears(const Checkpoint& ck) {
  const auto& qc = ck.quantization_config;
  const std::string where = ck.path + "/config.json";
  if (!qc.is_object()) fail_file(where, "no quantization_config");
  if (qc.value("quant_method", "") != "toga")
    fail_file(where, "quantization_config.quant_method is '{}', toga reads only its own format ('toga')",
              qc.value("quant_method", ""));
  const int version = qc.value("format_version", 0);
  if (version != 1 && version != kQuantFormatVersion)
    fail_file(where, "quantization format version {} is not supported (this toga reads 1 and {})", version,
              kQuantFormatVersion);
  if (!qc.contains("layers") || !qc["layers"].is_object()) fail_file(where, "quantization_config has no 'layers' object");
  const auto shapes = block_linear_shapes(ck.config);
  const TensorSource& src = *ck.tensors;
  std::vector<QuantizedLinear> out;
  for (const auto& [stem, entry] : qc["layers"].items()) {
    const std::string site = stem.rfind("model.", 0) == 0 ? stem.substr(6) : stem;
    auto sh = shapes.find(site);
    if (sh == shapes.end()) fail_file(where, "quantized layer '{}' is not a linear layer of this model", stem);
    const int64_t rows = sh->second[0], in = sh->second[1];
    QuantizedLinear q;
    q.site = site;
    try {
      q.salient = entry.at("salient").get<int64_t>();
    } catch (const nlohmann::json::exception& e) {
      fail_file(where, "layer '{}': {}", stem, e.what());
    }
    if (q.salient < 0 || q.salient > in) fail_file(where, "layer '{}': salient count {} outside [0, {}]", stem, q.salient, in);
    const QuantSpec low = q.weight_low = quant_spec_from_json(entry.at("weight_low"), where);
    const QuantSpec high = q.weight_high = quant_spec_from_json(entry.at("weight_high"), where);
    q.act_low = quant_spec_from_json(entry.at("act_low"), where);
    q.act_high = quant_spec_from_json(entry.at("act_high"), where);
    q.gptq_loss = entry.value("gptq_loss", 0.0);
    // Version 1 recorded the method for the whole checkpoint only.
    q.method = entry.value("method", qc.value("method", std::string("rtn")));
    q.sparsity = entry.value("sparsity", 0.0);
    q.sparsity_pattern = entry.value("sparsity_pattern", std::string());
    if (entry.contains("transform")) transform_from_json(entry["transform"], q, where, "layer '" + stem + "'");
    if ((in - q.salient > 0 && !low.quantized()) || (q.salient > 0 && !high.quantized()))
      fail_file(where, "layer '{}': a partition with columns has no quantizer (bits 16)", stem);
    q.weight.groups = entry.contains("groups") ? groups_from_json(entry["groups"], in, where, stem)
                                               : column_groups(in, q.salient, low, high);
    const int64_t n_groups = static_cast<int64_t>(q.weight.groups.size());
    const auto packed = read_stored(src, stem + ".weight_packed", DType::U8, {rows, packed_row_bytes(q.weight.groups)}, torch::kUInt8);
    const std::string file = src.info(stem + ".weight_packed").file;
    q.weight.codes = unpack_codes(packed, q.weight.groups, in, file);
    const torch::Tensor affine = affine_group_columns(q.weight.groups);
    q.weight.scales = torch::ones({rows, n_groups}, torch::kFloat32);
    q.weight.zeros = torch::zeros({rows, n_groups}, torch::kFloat32);
    if (affine.numel() > 0) {
      q.weight.scales.index_copy_(1, affine, read_stored(src, stem + ".weight_scale", DType::F16, {rows, affine.numel()},
                                                         torch::kFloat16).to(torch::kFloat32));
      q.weight.zeros.index_copy_(1, affine, read_stored(src, stem + ".weight_zero_point", DType::F16, {rows, affine.numel()},
                                                        torch::kFloat16).to(torch::kFloat32));
    }
    if (q.weight.has_codebook()) {
      int64_t entries = 0;
      for (const auto& g : q.weight.groups) entries += g.codebook ? int64_t(1) << g.bits : 0;
      q.weight.levels = read_stored(src, stem + ".weight_levels", DType::F16, {rows, entries}, torch::kFloat16).to(torch::kFloat32);
      if (!torch::isfinite(q.weight.levels).all().item<bool>()) fail_file(file, "layer '{}': non-finite codebook levels", stem);
    }
    if (src.has(stem + ".weight_column_scale")) {
      q.weight.column_scales =
          read_stored(src, stem + ".weight_column_scale", DType::F16, {in}, torch::kFloat16).to(torch::kFloat32);
      if (!torch::isfinite(q.weight.column_scales).all().item<bool>())
        fail_file(file, "layer '{}': non-finite column scales", stem);
    }
    if (!torch::isfinite(q.weight.scales).all().item<bool>() || !torch::isfinite(q.weight.zeros).all().item<bool>())
      fail_file(file, "layer '{}': non-finite scales or zero points", stem);
    q.perm = read_stored(src, stem + ".input_perm", DType::I32, {in}, torch::kInt32).to(torch::kLong);
    const auto sorted = std::get<0>(torch::sort(q.perm));
    if (!torch::equal(sorted, torch::arange(in, torch::kLong)))
      fail_file(file, "layer '{}': input_perm is not a permutation of 0..{}", stem, in - 1);
    out.push_back(std::move(q));
  }
  return out;
}

Model load_quantized_model(const Checkpoint& ck, const LoadOptions& opts) {
  const auto linears = read_quantized_linears(ck);
  Checkpoint view;
  view.path = ck.path;
  view.format = ck.format;
  view.config = ck.config;
  view.tensors = std::make_unique<DequantizedSource>(*ck.tensors, linears);
  Model m = load_model(view, opts);
  // The stored plan, as data: index, activation quantizer, kernel (the weight is already in place).
  for (const auto& q : linears) attach_quantized_linear(m, q, /*set_weight=*/false);
  if (opts.packed_kernels) use_packed_kernels(m, linears);
  const auto& kv = ck.quantization_config.value("kv_cache_scheme", nlohmann::json());
  if (kv.is_object()) {
    QuantSpec spec;
    spec.bits = kv.value("num_bits", 16);
    spec.symmetric = kv.value("symmetric", false);
    spec.clip_ratio = kv.value("clip_ratio", 1.0);
    validate(spec);
    attach_kv_quantizer(m, spec);
  }
  return m;
}

Plan plan_from_checkpoint(const Checkpoint& ck) {
  const auto& qc = ck.quantization_config;
  const std::string where = ck.path + "/config.json";
  const auto linears = read_quantized_linears(ck);
  Plan p;
  p.recipe = qc.value("recipe", qc.value("method", std::string("hand")));
  const auto g = qc.value("gptq", nlohmann::json::object());
  p.gptq.damp = g.value("damp", p.gptq.damp);
  p.gptq.block_size = g.value("block_size", p.gptq.block_size);
  p.gptq.act_order = g.value("act_order", p.gptq.act_order);
  p.gptq.true_sequential = g.value("true_sequential", p.gptq.true_sequential);
  p.provenance = {{"from_checkpoint", ck.path}};
  const auto& kv = qc.value("kv_cache_scheme", nlohmann::json());
  if (kv.is_object()) p.kv = {kv.value("num_bits", 16), kv.value("symmetric", false), 0, kv.value("clip_ratio", 1.0)};
  // A pruned checkpoint's orders are positions in its blocks' index lists; the unpruned base they
  // would refer to is not in the checkpoint.
  if (!ck.config.layer_shapes.empty())
    fail_file(where, "the checkpoint is pruned: its Plan cannot be re-applied to an unpruned base model from it alone");
  for (const auto& q : linears) {
    SitePlan s;
    static_cast<SiteScheme&>(s) = q;
    s.order = q.perm.clone();
    s.salient = q.perm.narrow(0, q.perm.numel() - q.salient, q.salient).clone();
    p.sites[q.site] = s;
  }
  return p;
}

Model load_any_model(const Checkpoint& ck, const LoadOptions& opts) {
  if (ck.quantization_config.is_object()) return load_quantized_model(ck, opts);
  return load_model(ck, opts);
}

}  // namespace toga
