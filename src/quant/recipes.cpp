#include "quant/recipes.h"

#include "quant/hadamard.h"
#include "quant/resq.h"
#include "quant/spinquant.h"

#include <cmath>
#include <mutex>

#include "util/error.h"

namespace toga {

nlohmann::json QuantizeOptions::to_json() const {
  nlohmann::json counts = nlohmann::json::object();
  for (const auto& [k, v] : salient_counts) counts[k] = v;
  return {{"method", method},
          {"weight_low", quant_spec_to_json(weight_low)},
          {"weight_high", quant_spec_to_json(weight_high)},
          {"act_low", quant_spec_to_json(act_low)},
          {"act_high", quant_spec_to_json(act_high)},
          {"kv", quant_spec_to_json(kv)},
          {"salient_fraction", salient_fraction},
          {"salient_counts", counts},
          {"reorder", reorder},
          {"online_transform", online_transform},
          {"rotation_steps", rotation_steps},
          {"refine_epochs", refine_epochs},
          {"sparsity", sparsity},
          {"sparsity_pattern", sparsity_pattern},
          {"damp", gptq.damp},
          {"block_size", gptq.block_size},
          {"act_order", gptq.act_order},
          {"true_sequential", gptq.true_sequential}};
}

namespace {

SitePlan base_site(const QuantizeOptions& o) {
  SitePlan s;
  s.method = o.method;
  s.weight_low = o.weight_low;
  s.weight_high = o.weight_high;
  s.act_low = o.act_low;
  s.act_high = o.act_high;
  s.order_rule = o.reorder ? "mean_abs" : "";
  s.sparsity = o.sparsity;
  s.sparsity_pattern = o.sparsity_pattern;
  return s;
}

Plan plan_shell(const QuantizeOptions& o, const std::string& recipe) {
  validate_scheme(base_site(o), "recipe " + recipe);
  Plan p;
  p.recipe = recipe;
  p.kv = o.kv;
  p.gptq = o.gptq;
  p.refine_epochs = o.refine_epochs;
  p.provenance = {{"options", o.to_json()}};
  return p;
}

QuantizeOptions generic_defaults() { return {}; }

// Atom (RECIPES.md): reorder by mean |x|, 12.5% salient INT8, INT4 weights and activations in
// groups of 128 (weight clip 0.85, activation clip 0.9), GPTQ, KV4.
QuantizeOptions atom_defaults() {
  QuantizeOptions o;
  o.method = "gptq";
  o.reorder = true;
  o.salient_fraction = 0.125;
  o.weight_low = {4, true, 128, 0.85};
  o.weight_high = {8, true, 0};
  o.act_low = {4, true, 128, 0.9};
  o.act_high = {8, true, 0};
  o.kv = {4, false, 0};
  return o;
}

// BiLLM (BASELINES.md §3): 1-bit weights, Hessian-salient columns binarized twice, the rest split at
// a break point, block-wise error compensation (quant/billm.h); weights only, no reordering, KV16.
QuantizeOptions billm_defaults() {
  QuantizeOptions o;
  o.method = "billm";
  o.reorder = false;  // its salient columns come from the Hessian, block by block
  o.weight_low = {1, true, 0};
  o.weight_high = {1, true, 0};
  return o;
}

void billm_check(const QuantizeOptions& o) {
  if (o.method != "billm" || o.weight_low.bits != 1 || o.act_low.quantized() || o.salient_fraction > 0 ||
      !o.salient_counts.empty() || o.reorder || o.sparsity > 0)
    fail("--method billm is BiLLM's own 1-bit weight-only scheme: it takes no --wbits, --abits, salient, reorder or "
         "sparsity flags");
}

Plan billm_plan(const Model& m, const QuantizeOptions& o) {
  billm_check(o);
  return uniform_plan(m, o, "billm");
}

// SliM-LLM (BASELINES.md §4): per-group 1/2/3 bits around the target (2 or 3) by Hessian salience and
// an output-KL search, GPTQ with SQC's range search; asymmetric groups of 128, weight-only, KV16.
QuantizeOptions slim_llm_defaults() {
  QuantizeOptions o;
  o.method = "slim-llm";
  o.reorder = false;
  o.weight_low = {2, false, 128};
  return o;
}

void slim_llm_check(const QuantizeOptions& o) {
  if (o.act_low.quantized() || o.salient_fraction > 0 || !o.salient_counts.empty() || o.reorder || o.sparsity > 0)
    fail("--method slim-llm is SliM-LLM's weight-only per-group scheme: it takes --wbits (2..7) and --group-size, no "
         "--abits, salient, reorder or sparsity flags");
  if (o.weight_low.bits < 2 || o.weight_low.bits > 7)
    fail("--method slim-llm allocates b − 1, b and b + 1 bits: --wbits must be 2..7, got {}", o.weight_low.bits);
}

Plan slim_llm_plan(const Model& m, const QuantizeOptions& o) {
  slim_llm_check(o);
  return uniform_plan(m, o, "slim-llm");
}

// OBR (BASELINES.md §5) on SpinQuant's front end (QuaRot's per-head Hadamard has no 9-wide
// construction for SmolLM2): learned R1/R2, online Hadamard on down_proj, W4 per channel with
// w_clip, A4 per token, KV4; Wanda 50 % (or --sparsity-pattern 2:4), OBR's compensation, then
// GPTQ after the split (obr) or RTN (obr-rtn).
QuantizeOptions obr_defaults(const std::string& method) {
  QuantizeOptions o = spinquant_defaults();
  o.method = method;
  o.sparsity = 0.5;
  return o;
}

void obr_check(const QuantizeOptions& o) {
  if (o.method != "obr-gptq" && o.method != "obr-rtn") fail("OBR's weight method is obr-gptq or obr-rtn, got '{}'", o.method);
  if (o.weight_low.group_size != 0) fail("OBR quantizes weights per output channel: --group-size must be 0");
  if (o.salient_fraction > 0 || !o.salient_counts.empty()) fail("OBR keeps no salient channels");
}

Plan obr_plan(const Model& m, const QuantizeOptions& o) {
  obr_check(o);
  Plan p = spinquant_plan(m, o);
  p.recipe = o.method == "obr-gptq" ? "obr" : "obr-rtn";
  return p;
}

// PTQ1.61 (BASELINES.md §6) without its LoRA preprocessing: 20 % of the input channels (largest max
// |x|) at 4 bits asymmetric, the rest binarized with learned α, r₁, r₂ (quant/ptq161.h), weight-only.
QuantizeOptions ptq161_defaults() {
  QuantizeOptions o;
  o.method = "ptq161";
  o.weight_low = {1, false, 0};
  o.weight_low.binary_centered = true;
  o.weight_high = {4, false, 0};
  o.salient_fraction = 0.2;
  o.reorder = true;
  return o;
}

void ptq161_check(const QuantizeOptions& o) {
  if (o.weight_low.bits != 1 || o.act_low.quantized() || o.sparsity > 0 || !o.reorder)
    fail("--method ptq161 is PTQ1.61's weight-only 1-bit scheme with salient channels by max |x|: it takes "
         "--salient-frac, --high-bits and --refine-epochs, no --wbits, --abits, sparsity or --no-reorder");
  if (!(o.salient_fraction >= 0 && o.salient_fraction < 1))
    fail("--method ptq161: the salient fraction must be in [0, 1), got {}", o.salient_fraction);
}

Plan ptq161_plan(const Model& m, const QuantizeOptions& o) {
  ptq161_check(o);
  Plan p = uniform_plan(m, o, "ptq161");
  for (auto& [name, sp] : p.sites) sp.order_rule = "max_abs";
  p.provenance["deviations"] = "no LoRA preprocessing (its corpus is not here); salience from the calibration windows "
                               "as the already-quantized blocks pass them on";
  return p;
}

struct Registry {
  std::mutex mutex;
  std::map<std::string, Recipe> recipes;
  Registry() {
    recipes["rtn"] = {"rtn", "round to nearest (optionally Atom-reordered mixed precision)",
                      [] {
                        auto o = generic_defaults();
                        o.method = "rtn";
                        return o;
                      },
                      [](const Model& m, const QuantizeOptions& o) { return uniform_plan(m, o, "rtn"); }};
    recipes["gptq"] = {"gptq", "GPTQ (optionally Atom-reordered mixed precision)",
                       [] {
                         auto o = generic_defaults();
                         o.method = "gptq";
                         return o;
                       },
                       [](const Model& m, const QuantizeOptions& o) { return uniform_plan(m, o, "gptq"); }};
    // SparseGPT (RECIPES.md): 50 % unstructured sparsity pruned and quantized in one GPTQ pass.
    recipes["sparsegpt"] = {"sparsegpt", "SparseGPT: 50% unstructured sparsity inside GPTQ (joint prune + quantize)",
                            [] {
                              auto o = generic_defaults();
                              o.method = "gptq";
                              o.sparsity = 0.5;
                              return o;
                            },
                            [](const Model& m, const QuantizeOptions& o) { return uniform_plan(m, o, "sparsegpt"); }};
    recipes["atom"] = {"atom", "Atom: reorder by mean |x|, 12.5% INT8 salient, INT4 g128 W and A, GPTQ, KV4",
                       atom_defaults, [](const Model& m, const QuantizeOptions& o) { return uniform_plan(m, o, "atom"); }};
    recipes["billm"] = {"billm",
                        "BiLLM: 1-bit weights, Hessian-salient columns binarized twice, the rest split at a break "
                        "point into two binarized groups, block-wise error compensation (codebook storage)",
                        billm_defaults, billm_plan, nullptr, billm_check};
    recipes["slim-llm"] = {"slim-llm",
                           "SliM-LLM: per-group bit widths around --wbits (Hessian salience, output-KL search), GPTQ "
                           "with an L2.4 range search, asymmetric g128, weight-only",
                           slim_llm_defaults, slim_llm_plan, nullptr, slim_llm_check};
    recipes["obr"] = {"obr",
                      "OBR-GPTQ on SpinQuant's front end: Wanda 50% (or 2:4), closed-form compensation of the pruning and "
                      "first-half quantization errors, GPTQ on the rest with pruned weights held at 0; W4A4KV4",
                      [] { return obr_defaults("obr-gptq"); }, obr_plan, spinquant_prepare, obr_check};
    recipes["obr-rtn"] = {"obr-rtn", "OBR-RTN: as obr, with round to nearest after the compensation",
                          [] { return obr_defaults("obr-rtn"); }, obr_plan, spinquant_prepare, obr_check};
    recipes["ptq161"] = {"ptq161",
                         "PTQ1.61 without LoRA preprocessing: 20% channels (max |x|) at INT4, the rest binarized with "
                         "learned row/column scales, block-wise MSE − log cos against the FP block",
                         ptq161_defaults, ptq161_plan, nullptr, ptq161_check};
    recipes["resq"] = {"resq",
                       "ResQ: PCA bases folded into the weights (top-variance 1/8 at INT8, the rest INT4, W and A), online "
                       "Hadamard on down_proj, GPTQ, KV4",
                       resq_defaults, resq_plan, resq_prepare};
    recipes["spinquant"] = {"spinquant",
                            "SpinQuant: R1 and per-layer R2 learned by Cayley SGD at W16A4KV4, folded; online Hadamard on "
                            "down_proj; GPTQ W4A4KV4",
                            spinquant_defaults, spinquant_plan, spinquant_prepare};
  }
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

void register_recipe(Recipe r) {
  auto& reg = registry();
  std::lock_guard<std::mutex> lock(reg.mutex);
  reg.recipes[r.name] = std::move(r);
}

const Recipe& find_recipe(const std::string& name) {
  auto& reg = registry();
  std::lock_guard<std::mutex> lock(reg.mutex);
  auto it = reg.recipes.find(name);
  if (it == reg.recipes.end()) {
    std::string known;
    for (const auto& [n, r] : reg.recipes) known += (known.empty() ? "" : ", ") + n;
    fail("unknown recipe '{}' (known: {})", name, known);
  }
  return it->second;
}

std::vector<std::string> recipe_names() {
  auto& reg = registry();
  std::lock_guard<std::mutex> lock(reg.mutex);
  std::vector<std::string> out;
  for (const auto& [n, r] : reg.recipes) out.push_back(n);
  return out;
}

void set_down_proj_transform(Plan& p, const Model& m, const std::string& kind, uint64_t seed_base, const std::string& method) {
  if (kind != "hadamard" && kind != "rotation") fail("the online transform must be hadamard or rotation, got '{}'", kind);
  for (size_t l = 0; l < m.blocks.size(); ++l) {
    const LinearSite& down = m.blocks[l].down;
    if (kind == "hadamard") {
      try {
        hadamard_factors(down.in_features());
      } catch (const Error& e) {
        fail("{}'s online Hadamard on {}'s input: {} (--online-transform rotation uses a random orthogonal matrix)", method,
             down.name, e.what());
      }
    }
    SitePlan& sp = p.sites.at(down.name);
    sp.salient = torch::Tensor();
    sp.salient_count = 0;
    sp.transform = kind;
    sp.transform_seed = seed_base + l;
  }
}

Plan uniform_plan(const Model& model, const QuantizeOptions& o, const std::string& recipe) {
  Plan p = plan_shell(o, recipe);
  for (const auto* s : model.block_sites()) {
    SitePlan sp = base_site(o);
    auto it = o.salient_counts.find(s->name);
    if (it != o.salient_counts.end()) sp.salient_count = it->second;
    else sp.salient_count = std::llround(o.salient_fraction * double(s->in_features()));
    p.sites[s->name] = sp;
  }
  for (const auto& [name, k] : o.salient_counts) {
    if (!p.sites.count(name)) fail("salient count for '{}': no such linear layer in this model", name);
    if (k < 0 || k > model.site(name).in_features())
      fail("salient count {} for '{}' is outside [0, {}]", k, name, model.site(name).in_features());
  }
  return p;
}

Plan plan_from_masks(const Model& model, const nlohmann::json& masks, const QuantizeOptions& o,
                     const std::string& where) {
  if (!masks.is_object()) fail_file(where, "expected an object {{\"layers.N.self_attn.q_proj\": mask, ...}}");
  Plan p = plan_shell(o, "masks");
  p.provenance["masks"] = where;
  for (const auto& [key, value] : masks.items()) {
    const std::string name = key.rfind("model.", 0) == 0 ? key.substr(6) : key;
    bool found = false;
    for (const auto* s : model.block_sites()) found = found || s->name == name;
    if (!found) fail_file(where, "'{}' is not a linear layer of this model", key);
    const LinearSite& site = model.site(name);
    SitePlan sp = base_site(o);
    std::vector<int64_t> ids;
    if (value.is_object() && value.contains("salient") && value["salient"].is_array()) {
      for (const auto& e : value["salient"]) {
        if (!e.is_number_integer()) fail_file(where, "'{}': salient holds '{}', not a channel number", key, e.dump());
        ids.push_back(e.get<int64_t>());
      }
    } else if (value.is_array()) {
      if (int64_t(value.size()) != site.in_features())
        fail_file(where, "'{}': mask has {} entries, the layer reads {} channels", key, value.size(), site.in_features());
      for (size_t i = 0; i < value.size(); ++i) {
        const auto& e = value[i];
        if (!(e.is_number() && (e.get<double>() == 0 || e.get<double>() == 1)))
          fail_file(where, "'{}': mask entry {} is '{}', not 0 or 1", key, i, e.dump());
        if (e.get<double>() == 1)
          ids.push_back(site.in_index.defined() ? site.in_index[int64_t(i)].item<int64_t>() : int64_t(i));
      }
    } else {
      fail_file(where, "'{}': expected a 0/1 mask over input channels or {{\"salient\": [channels]}}", key);
    }
    sp.salient = torch::tensor(ids, torch::kLong);
    p.sites[name] = sp;
  }
  return p;
}

QuantizationReport quantize_model(Model& model, const QuantizeOptions& opts, const torch::Tensor& calibration) {
  return apply_plan(model, uniform_plan(model, opts, opts.method), calibration, "options", opts.progress);
}

}  // namespace toga
