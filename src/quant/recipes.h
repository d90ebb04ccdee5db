// Recipes: library functions that turn a method's options (and, where they need it, the model or a
// search's output) into a Plan. A new method is one function here plus a register_recipe() line;
// apply_plan, the checkpoint format and every evaluation verb come with it.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "quant/apply_plan.h"
#include "quant/plan.h"

namespace toga {

// The options every fixed-precision recipe shares (the `toga quantize` flags).
struct QuantizeOptions {
  std::string method = "rtn";  // weight quantizer: one of weight_methods() (quant/plan.h)
  QuantSpec weight_low{4, true, 0};
  QuantSpec weight_high{8, true, 0};
  QuantSpec act_low{16};       // bits 16 = weight-only
  QuantSpec act_high{8, true, 0};
  QuantSpec kv{16};            // KV-cache quantizer (group = head_dim), bits 16 = none
  double salient_fraction = 0.0;                  // k = round(fraction * in_features) ...
  std::map<std::string, int64_t> salient_counts;  // ... unless a site is listed here
  bool reorder = true;         // sort input channels by mean |x| so the salient ones are last
  double sparsity = 0;         // pruned fraction: SparseGPT's inside GPTQ (method gptq), OBR's by Wanda
  std::string sparsity_pattern;  // "" (unstructured) | "2:4"
  // Rotation methods' online transforms (ResQ's down_proj input): "hadamard" (refused at a width
  // quant/hadamard.h cannot build) or "rotation" (random orthogonal, any width).
  std::string online_transform = "hadamard";
  int refine_epochs = 20;  // block-wise refinement of learned scales (PTQ1.61)
  int rotation_steps = 0;  // learned rotations (SpinQuant): training steps, 0 = one per calibration window
  GptqSettings gptq;
  bool progress = true;

  nlohmann::json to_json() const;
};

struct Recipe {
  std::string name;
  std::string description;
  // The recipe's defaults (e.g. Atom's 12.5% INT8, groups of 128, clips, KV4); a front end starts
  // from these and overrides only what the user gave.
  std::function<QuantizeOptions()> defaults;
  std::function<Plan(const Model&, const QuantizeOptions&)> make;
  // Methods that transform the model before their Plan (rotations folded from calibration
  // statistics, e.g. ResQ): called with the calibration windows; returns its provenance. Empty for
  // the others.
  std::function<nlohmann::json(Model&, const torch::Tensor&, const QuantizeOptions&)> prepare;
  // Refuses option combinations the method cannot honour, before any model is loaded or prepared
  // (make calls it too). Empty: anything uniform_plan accepts.
  std::function<void(const QuantizeOptions&)> check;
};

void register_recipe(Recipe r);
const Recipe& find_recipe(const std::string& name);  // unknown names are an error listing the known
std::vector<std::string> recipe_names();

// Every block linear with the same quantizers: the last k channels of Atom's mean-|x| order
// (reorder) or of the stored order are salient. RTN and GPTQ are this with two method names.
Plan uniform_plan(const Model& model, const QuantizeOptions& opts, const std::string& recipe);

// Per-site salient sets from masks, e.g. a search's output: {"site": [0/1 per input channel]} or
// {"site": {"salient": [channel ids]}}; other choices from `opts` (channels in Atom's order, the
// salient ones moved last). `where` names the file in errors.
Plan plan_from_masks(const Model& model, const nlohmann::json& masks, const QuantizeOptions& opts,
                     const std::string& where);

// Rotation recipes' online transform on every down_proj input (ResQ's and SpinQuant's R4): `kind`
// "hadamard" (a width with no Hadamard matrix is an error naming the site and `method`) or
// "rotation", seeded seed_base + layer, with no high-precision channels.
void set_down_proj_transform(Plan& p, const Model& m, const std::string& kind, uint64_t seed_base, const std::string& method);

// Convenience for tests and scripts: uniform_plan + apply_plan.
QuantizationReport quantize_model(Model& model, const QuantizeOptions& opts, const torch::Tensor& calibration);

}  // namespace toga
