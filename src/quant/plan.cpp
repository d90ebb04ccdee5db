#include "quant/plan.h"

#include <algorithm>
#include <set>

#include "quant/transforms.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace toga {

namespace {

nlohmann::json index_json(const torch::Tensor& t) {
  const auto c = t.to(torch::kCPU, torch::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

torch::Tensor index_from_json(const nlohmann::json& j, const std::string& where, const std::string& what) {
  if (!j.is_array()) fail_file(where, "{} must be a list of channel numbers", what);
  std::vector<int64_t> v;
  for (const auto& e : j) {
    if (!e.is_number_integer()) fail_file(where, "{} holds '{}', not a channel number", what, e.dump());
    v.push_back(e.get<int64_t>());
  }
  return torch::tensor(v, torch::kLong);
}

}  // namespace

nlohmann::json transform_to_json(const SiteScheme& s) {
  if (s.transform.empty()) return nullptr;
  return {{"kind", s.transform}, {"seed", s.transform_seed}, {"mode", "online"}};
}

void transform_from_json(const nlohmann::json& t, SiteScheme& s, const std::string& where, const std::string& what) {
  if (!t.is_object() || !t.contains("kind") || !t["kind"].is_string())
    fail_file(where, "{}: transform must be {{\"kind\": \"hadamard\"|\"rotation\", \"seed\": n}}", what);
  for (const auto& [k, v] : t.items())
    if (k != "kind" && k != "seed" && k != "mode") fail_file(where, "{}: transform has an unknown key '{}'", what, k);
  s.transform = t["kind"].get<std::string>();
  if (!is_known_transform(s.transform))
    fail_file(where, "{}: unknown transform '{}' (known: hadamard, rotation)", what, s.transform);
  s.transform_seed = 0;
  if (t.contains("seed")) {
    if (!t["seed"].is_number_unsigned()) fail_file(where, "{}: transform seed must be a non-negative integer", what);
    s.transform_seed = t["seed"].get<uint64_t>();
  }
  const std::string mode = t.value("mode", std::string("online"));
  // A rotation folded into the neighbouring layers (SpinQuant's R1/R2) needs the RMSNorm gains folded
  // first: that toolkit is not part of this engine yet, so the Plan says so instead of ignoring it.
  if (mode != "online")
    fail_file(where, "{}: transform mode '{}' is not supported (only \"online\" input transforms)", what, mode);
}

const std::vector<std::string>& weight_methods() {
  static const std::vector<std::string> methods = {"rtn", "gptq", "billm", "slim-llm", "obr-rtn", "obr-gptq", "ptq161"};
  return methods;
}

bool is_weight_method(const std::string& m) {
  const auto& all = weight_methods();
  return std::find(all.begin(), all.end(), m) != all.end();
}

bool method_prunes(const std::string& m) { return m == "gptq" || m == "obr-rtn" || m == "obr-gptq"; }

void validate_scheme(const SiteScheme& s, const std::string& where) {
  if (!is_weight_method(s.method)) {
    std::string known;
    for (const auto& m : weight_methods()) known += (known.empty() ? "" : ", ") + m;
    fail("{}: weight method '{}' is not one of {}", where, s.method, known);
  }
  if (!(s.sparsity >= 0 && s.sparsity < 1)) fail("{}: sparsity {} is outside [0, 1)", where, s.sparsity);
  if (!s.sparsity_pattern.empty() && s.sparsity_pattern != "2:4")
    fail("{}: sparsity pattern '{}' is not '2:4' (or empty for unstructured)", where, s.sparsity_pattern);
  if (s.sparsity_pattern == "2:4" && s.sparsity != 0.5) fail("{}: a 2:4 pattern prunes half: sparsity must be 0.5", where);
  if (s.sparsity > 0 && !method_prunes(s.method))
    fail("{}: sparsity needs a pruning weight method (gptq = SparseGPT, obr-rtn, obr-gptq), not '{}'", where, s.method);
}

namespace {

nlohmann::json site_to_json(const SitePlan& s) {
  nlohmann::json j;
  if (s.order.defined()) j["order"] = index_json(s.order);
  else if (!s.order_rule.empty()) j["order"] = s.order_rule;
  if (s.salient.defined()) j["salient"] = index_json(s.salient);
  else if (s.salient_count >= 0) j["salient"] = {{"count", s.salient_count}};
  else j["salient"] = {{"fraction", s.salient_fraction}};
  j["method"] = s.method;
  j["weight"] = {{"low", quant_spec_to_json(s.weight_low)}, {"high", quant_spec_to_json(s.weight_high)}};
  j["act"] = {{"low", quant_spec_to_json(s.act_low)}, {"high", quant_spec_to_json(s.act_high)}};
  if (!s.transform.empty()) j["transform"] = transform_to_json(s);
  if (s.sparsity > 0) j["sparsity"] = s.sparsity;
  if (!s.sparsity_pattern.empty()) j["sparsity_pattern"] = s.sparsity_pattern;
  return j;
}

const std::set<std::string> kSiteKeys = {"order", "salient", "method", "weight", "act", "transform", "sparsity",
                                         "sparsity_pattern"};

SitePlan site_from_json(const nlohmann::json& j, const std::string& where, const std::string& site) {
  const std::string what = "site '" + site + "'";
  if (!j.is_object()) fail_file(where, "{}: expected an object", what);
  for (const auto& [k, v] : j.items())
    if (!kSiteKeys.count(k)) fail_file(where, "{}: unknown key '{}' (known: order, salient, method, weight, act, transform, sparsity, sparsity_pattern)", what, k);
  SitePlan s;
  if (j.contains("order")) {
    const auto& o = j["order"];
    if (o.is_string()) {
      s.order_rule = o.get<std::string>();
      if (s.order_rule != "mean_abs" && s.order_rule != "max_abs" && s.order_rule != "none")
        fail_file(where, "{}: order '{}' is not a list or a known rule (mean_abs, max_abs, none)", what, s.order_rule);
      if (s.order_rule == "none") s.order_rule.clear();
    } else {
      s.order = index_from_json(o, where, what + " order");
    }
  }
  if (j.contains("salient")) {
    const auto& sj = j["salient"];
    if (sj.is_array()) {
      s.salient = index_from_json(sj, where, what + " salient");
    } else if (sj.is_object() && sj.contains("count") && sj["count"].is_number_integer()) {
      s.salient_count = sj["count"].get<int64_t>();
      if (s.salient_count < 0) fail_file(where, "{}: salient count {} is negative", what, s.salient_count);
    } else if (sj.is_object() && sj.contains("fraction") && sj["fraction"].is_number()) {
      s.salient_fraction = sj["fraction"].get<double>();
      if (!(s.salient_fraction >= 0 && s.salient_fraction <= 1))
        fail_file(where, "{}: salient fraction {} is outside [0, 1]", what, s.salient_fraction);
    } else {
      fail_file(where, "{}: salient must be a channel list, {{\"count\": k}} or {{\"fraction\": f}}", what);
    }
  }
  if (j.contains("method")) {
    s.method = j["method"].is_string() ? j["method"].get<std::string>() : "";
  }
  auto specs = [&](const char* key, QuantSpec& low, QuantSpec& high) {
    if (!j.contains(key)) return;
    const auto& p = j[key];
    if (!p.is_object()) fail_file(where, "{}: '{}' must be an object {{\"low\": spec, \"high\": spec}}", what, key);
    if (p.contains("low")) low = quant_spec_from_json(p["low"], where + ": " + what + " " + key + ".low");
    if (p.contains("high")) high = quant_spec_from_json(p["high"], where + ": " + what + " " + key + ".high");
  };
  specs("weight", s.weight_low, s.weight_high);
  specs("act", s.act_low, s.act_high);
  if (j.contains("transform") && !j["transform"].is_null()) transform_from_json(j["transform"], s, where, what);
  if (j.contains("sparsity")) {
    if (!j["sparsity"].is_number() || !(j["sparsity"].get<double>() >= 0 && j["sparsity"].get<double>() < 1))
      fail_file(where, "{}: sparsity must be a number in [0, 1)", what);
    s.sparsity = j["sparsity"].get<double>();
  }
  if (j.contains("sparsity_pattern")) {
    if (!j["sparsity_pattern"].is_string()) fail_file(where, "{}: sparsity_pattern must be a string", what);
    s.sparsity_pattern = j["sparsity_pattern"].get<std::string>();
  }
  validate_scheme(s, where + ": " + what);
  return s;
}

nlohmann::json pruning_to_json(const BlockPruning& p) {
  nlohmann::json j = nlohmann::json::object();
  auto put = [&](const char* k, const torch::Tensor& t) {
    if (t.defined()) j[k] = index_json(t);
  };
  put("attn_in", p.attn_in);
  put("attn_out", p.attn_out);
  put("mlp_in", p.mlp_in);
  put("mlp_inner", p.mlp_inner);
  put("mlp_out", p.mlp_out);
  put("kv_heads", p.kv_heads);
  return j;
}

BlockPruning pruning_from_json(const nlohmann::json& j, const std::string& where, const std::string& block) {
  BlockPruning p;
  if (!j.is_object()) fail_file(where, "block {}: expected an object of index lists", block);
  for (const auto& [k, v] : j.items()) {
    const std::string what = "block " + block + " " + k;
    if (k == "attn_in") p.attn_in = index_from_json(v, where, what);
    else if (k == "attn_out") p.attn_out = index_from_json(v, where, what);
    else if (k == "mlp_in") p.mlp_in = index_from_json(v, where, what);
    else if (k == "mlp_inner") p.mlp_inner = index_from_json(v, where, what);
    else if (k == "mlp_out") p.mlp_out = index_from_json(v, where, what);
    else if (k == "kv_heads") p.kv_heads = index_from_json(v, where, what);
    else fail_file(where, "block {}: unknown key '{}' (attn_in, attn_out, mlp_in, mlp_inner, mlp_out, kv_heads)", block, k);
  }
  return p;
}

// Checks an index list: int64 1-D, entries in [0, width), no repeats; `sorted` also requires
// increasing order (pruning lists).
void check_index(const torch::Tensor& t, int64_t width, bool sorted, const std::string& where, const std::string& what) {
  const auto c = t.to(torch::kCPU, torch::kLong).contiguous();
  if (c.dim() != 1) fail_file(where, "{}: expected a list", what);
  std::vector<char> seen(static_cast<size_t>(width), 0);
  const int64_t* p = c.data_ptr<int64_t>();
  for (int64_t i = 0; i < c.numel(); ++i) {
    if (p[i] < 0 || p[i] >= width) fail_file(where, "{}: channel {} is out of range [0, {})", what, p[i], width);
    if (seen[p[i]]) fail_file(where, "{}: channel {} appears twice", what, p[i]);
    if (sorted && i > 0 && p[i] <= p[i - 1]) fail_file(where, "{}: channels must be increasing", what);
    seen[p[i]] = 1;
  }
}

}  // namespace

nlohmann::json quant_spec_to_json(const QuantSpec& s) {
  return {{"bits", s.bits},           {"symmetric", s.symmetric},   {"group_size", s.group_size},
          {"clip_ratio", s.clip_ratio}, {"mse_clip", s.mse_clip}, {"binary_centered", s.binary_centered}};
}

QuantSpec quant_spec_from_json(const nlohmann::json& j, const std::string& where) {
  static const std::set<std::string> keys = {"bits", "symmetric", "group_size", "clip_ratio", "mse_clip",
                                             "binary_centered"};
  try {
    if (!j.is_object()) fail_file(where, "quantizer spec {} is not an object", j.dump());
    for (const auto& [k, v] : j.items())
      if (!keys.count(k)) fail_file(where, "quantizer spec {}: unknown key '{}'", j.dump(), k);
    QuantSpec s;
    s.bits = j.at("bits").get<int>();
    s.symmetric = j.value("symmetric", true);
    s.group_size = j.value("group_size", 0);
    s.clip_ratio = j.value("clip_ratio", 1.0);
    s.mse_clip = j.value("mse_clip", false);
    s.binary_centered = j.value("binary_centered", false);
    validate(s);
    return s;
  } catch (const nlohmann::json::exception& e) {
    fail_file(where, "malformed quantizer spec {}: {}", j.dump(), e.what());
  } catch (const Error& e) {
    const std::string msg = e.what();
    if (msg.rfind(where, 0) == 0) throw;
    fail_file(where, "invalid quantizer spec {}: {}", j.dump(), msg);
  }
}

bool Plan::needs_calibration() const {
  if (default_site && default_site->needs_statistics()) return true;
  for (const auto& [name, s] : sites)
    if (s.needs_statistics()) return true;
  return false;
}

Plan Plan::expanded(const Model& model) const {
  Plan p = *this;
  if (!default_site) return p;
  for (const auto* s : model.block_sites())
    if (!p.sites.count(s->name)) p.sites[s->name] = *default_site;
  p.default_site.reset();
  return p;
}

nlohmann::json plan_to_json(const Plan& plan) {
  nlohmann::json sites = nlohmann::json::object();
  for (const auto& [name, s] : plan.sites) sites[name] = site_to_json(s);
  nlohmann::json blocks = nlohmann::json::object();
  for (const auto& [layer, p] : plan.blocks) blocks[std::to_string(layer)] = pruning_to_json(p);
  nlohmann::json j = {{"toga_plan", 1},
                      {"recipe", plan.recipe},
                      {"kv", quant_spec_to_json(plan.kv)},
                      {"gptq", {{"damp", plan.gptq.damp}, {"block_size", plan.gptq.block_size},
                                {"act_order", plan.gptq.act_order}, {"true_sequential", plan.gptq.true_sequential}}},
                      {"blocks", blocks},
                      {"sites", sites},
                      {"provenance", plan.provenance}};
  if (plan.default_site) j["default"] = site_to_json(*plan.default_site);
  if (plan.refine_epochs != Plan{}.refine_epochs) j["refine_epochs"] = plan.refine_epochs;
  return j;
}

Plan plan_from_json(const nlohmann::json& j, const std::string& where) {
  static const std::set<std::string> keys = {"toga_plan", "recipe", "kv", "gptq", "blocks", "sites", "default",
                                             "provenance", "refine_epochs"};
  if (!j.is_object()) fail_file(where, "a Plan must be a JSON object");
  for (const auto& [k, v] : j.items())
    if (!keys.count(k)) fail_file(where, "unknown key '{}' in the Plan", k);
  if (j.value("toga_plan", 0) != 1) fail_file(where, "not a toga Plan (\"toga_plan\": 1 missing) or an unknown version");
  Plan p;
  try {
    p.recipe = j.value("recipe", "hand");
    if (j.contains("kv")) p.kv = quant_spec_from_json(j["kv"], where + ": kv");
    if (j.contains("gptq")) {
      const auto& g = j["gptq"];
      p.gptq.damp = g.value("damp", p.gptq.damp);
      p.gptq.block_size = g.value("block_size", p.gptq.block_size);
      p.gptq.act_order = g.value("act_order", p.gptq.act_order);
      p.gptq.true_sequential = g.value("true_sequential", p.gptq.true_sequential);
      if (!(p.gptq.damp >= 0) || p.gptq.block_size <= 0) fail_file(where, "gptq: damp must be >= 0 and block_size > 0");
    }
    if (j.contains("provenance")) p.provenance = j["provenance"];
    if (j.contains("refine_epochs")) {
      if (!j["refine_epochs"].is_number_integer() || j["refine_epochs"].get<int>() < 0)
        fail_file(where, "refine_epochs must be a non-negative integer");
      p.refine_epochs = j["refine_epochs"].get<int>();
    }
  } catch (const nlohmann::json::exception& e) {
    fail_file(where, "malformed Plan: {}", e.what());
  }
  const nlohmann::json def = j.value("default", nlohmann::json::object());
  if (j.contains("default")) p.default_site = site_from_json(def, where, "default");
  const nlohmann::json sites = j.value("sites", nlohmann::json::object());
  const nlohmann::json blocks = j.value("blocks", nlohmann::json::object());
  if (!sites.is_object() || !blocks.is_object()) fail_file(where, "'sites' and 'blocks' must be objects");
  for (const auto& [name, entry] : sites.items()) {
    nlohmann::json merged = def;
    merged.merge_patch(entry);
    const std::string site = name.rfind("model.", 0) == 0 ? name.substr(6) : name;
    p.sites[site] = site_from_json(merged, where, site);
  }
  for (const auto& [layer, entry] : blocks.items()) {
    int l = -1;
    try {
      size_t used = 0;
      l = std::stoi(layer, &used);
      if (used != layer.size()) l = -1;
    } catch (const std::exception&) {
    }
    if (l < 0) fail_file(where, "blocks: '{}' is not a layer number", layer);
    p.blocks[l] = pruning_from_json(entry, where, layer);
  }
  return p;
}

Plan read_plan_file(const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    fail_file(path, "invalid JSON: {}", e.what());
  }
  return plan_from_json(j, path);
}

void write_plan_file(const std::string& path, const Plan& plan, OnExisting on_existing) {
  write_text_atomically(path, plan_to_json(plan).dump(1) + "\n", on_existing);
}

void validate_plan(const Plan& plan_in, const Model& model, const std::string& where) {
  const Plan plan = plan_in.expanded(model);
  const auto& c = model.config;
  const int64_t hidden = c.hidden_size;
  for (const auto& [layer, p] : plan.blocks) {
    if (layer < 0 || layer >= int(model.blocks.size()))
      fail_file(where, "blocks: layer {} does not exist (the model has {})", layer, model.blocks.size());
    const Block& b = model.blocks[layer];
    const std::string w = "block " + std::to_string(layer);
    if (p.attn_in.defined()) check_index(p.attn_in, hidden, true, where, w + " attn_in");
    if (p.attn_out.defined()) check_index(p.attn_out, hidden, true, where, w + " attn_out");
    if (p.mlp_in.defined()) check_index(p.mlp_in, hidden, true, where, w + " mlp_in");
    if (p.mlp_out.defined()) check_index(p.mlp_out, hidden, true, where, w + " mlp_out");
    if (p.mlp_inner.defined()) check_index(p.mlp_inner, b.gate.out_features(), true, where, w + " mlp_inner");
    if (p.kv_heads.defined()) check_index(p.kv_heads, b.k.out_features() / c.head_dim, true, where, w + " kv_heads");
    for (const auto* t : {&p.attn_in, &p.attn_out, &p.mlp_in, &p.mlp_out, &p.mlp_inner, &p.kv_heads})
      if (t->defined() && t->numel() == 0) fail_file(where, "{}: an index list keeps no channel", w);
  }
  std::set<std::string> known;
  for (const auto* s : model.block_sites()) known.insert(s->name);
  for (const auto& [name, s] : plan.sites) {
    const std::string w = "site '" + name + "'";
    if (!known.count(name)) fail_file(where, "{} is not a linear layer of this model", name);
    // The channels the site reads once the plan's pruning is done (source numbering).
    const LinearSite& site = model.site(name);
    const int layer = std::stoi(name.substr(std::string("layers.").size()));
    const BlockPruning* prune = plan.blocks.count(layer) ? &plan.blocks.at(layer) : nullptr;
    const std::string kind = name.substr(name.rfind('.') + 1);
    int64_t width = site.in_index.defined() ? site.in_index.max().item<int64_t>() + 1 : site.in_features();
    torch::Tensor reads = site.in_index;  // undefined = all of [0, width)
    if (kind == "q_proj" || kind == "k_proj" || kind == "v_proj" || kind == "gate_proj" || kind == "up_proj") {
      width = hidden;
      const torch::Tensor& kept = kind[0] == 'g' || kind[0] == 'u' ? (prune ? prune->mlp_in : torch::Tensor())
                                                                    : (prune ? prune->attn_in : torch::Tensor());
      if (kept.defined()) reads = kept;
    } else if (kind == "down_proj" && prune && prune->mlp_inner.defined()) {
      reads = prune->mlp_inner;
    } else if (kind == "o_proj" && prune && prune->kv_heads.defined()) {
      reads = torch::Tensor();  // heads pruned: the order must cover the kept attention dims
      width = prune->kv_heads.numel() * (site.in_features() / (model.blocks[layer].k.out_features() / c.head_dim));
    }
    const int64_t n = reads.defined() ? reads.numel() : width;
    if (s.order.defined()) {
      check_index(s.order, std::max<int64_t>(width, reads.defined() ? reads.max().item<int64_t>() + 1 : 0), false,
                  where, w + " order");
      if (s.order.numel() != n) fail_file(where, "{} order has {} channels, the site reads {}", w, s.order.numel(), n);
      if (reads.defined() &&
          !torch::equal(std::get<0>(torch::sort(s.order.to(torch::kLong))), std::get<0>(torch::sort(reads.cpu()))))
        fail_file(where, "{} order is not a permutation of the channels its block reads", w);
    }
    if (s.salient.defined()) {
      check_index(s.salient, std::max<int64_t>(width, reads.defined() ? reads.max().item<int64_t>() + 1 : 0), false,
                  where, w + " salient");
      const auto pool = s.order.defined() ? s.order : reads.defined() ? reads.cpu() : torch::arange(width);
      if (!torch::isin(s.salient, pool).all().item<bool>())
        fail_file(where, "{} salient channels must be channels the site reads", w);
    }
    if (s.salient_count > n) fail_file(where, "{} salient count {} exceeds its {} channels", w, s.salient_count, n);
    auto storable = [&](const QuantSpec& q, bool weight, const char* what) {
      if (weight ? !(q.bits >= 1 && q.bits <= 8) : !(q.quantized() || q.bits == 16))
        fail_file(where, "{} {} bits {}: the format stores {}", w, what, q.bits, weight ? "1..8" : "1..8 or 16");
      if (!weight && q.quantized() && q.bits < 2)
        fail_file(where, "{} {} bits {}: activations need at least 2 bits", w, what, q.bits);
    };
    try {
      validate_scheme(s, w);
    } catch (const Error& e) {
      fail_file(where, "{}", e.what());
    }
    storable(s.weight_low, true, "weight.low");
    const bool has_salient = s.salient.defined() ? s.salient.numel() > 0 : s.salient_count > 0 || s.salient_fraction > 0;
    if (has_salient) storable(s.weight_high, true, "weight.high");
    storable(s.act_low, false, "act.low");
    if (!s.transform.empty() && plan.gptq.act_order && s.method == "gptq")
      fail_file(where, "{}: an input transform with GPTQ act-order is not supported (the transform is fixed before "
                       "GPTQ reorders columns)", w);
    if (has_salient) storable(s.act_high, false, "act.high");
  }
  if (plan.kv.quantized() && plan.kv.bits < 2) fail_file(where, "kv bits {}: at least 2", plan.kv.bits);
}

}  // namespace toga
