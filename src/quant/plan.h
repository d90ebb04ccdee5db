// The Plan: what a compression method decided, per linear site, as data. Every method (RTN, GPTQ,
// Atom-style, a search, a script, a person) produces a Plan; apply_plan() (apply_plan.h) does the
// work; the checkpoint stores the resolved Plan and loading reads it back instead of re-deriving
// anything. docs/FORMAT.md holds the JSON schema.
//
// Channel numbers are in the *source* numbering of a site's input: residual channels for q/k/v and
// gate/up, attention dims (head*head_dim) for o_proj, intermediate channels for down_proj. Pruning
// (which channels a block reads and writes) is per block, because the sites that read one input
// share it; a site's order is a permutation of the channels its block keeps.
#pragma once

#include <map>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "model/model.h"
#include "model/structure.h"
#include "quant/quantizer.h"
#include "util/atomic_file.h"

namespace toga {

// How one site's weights and inputs are quantized: what a Plan asks for and what a checkpoint stores
// per layer (QuantizedLinear), so the two are copied as one.
struct SiteScheme {
  std::string method = "rtn";  // weight quantizer: one of weight_methods()
  QuantSpec weight_low{4, true, 0}, weight_high{8, true, 0};
  QuantSpec act_low{16}, act_high{16};  // bits 16 = weight-only
  // Online orthogonal input transform (quant/transforms.h): "" | "hadamard" | "rotation", applied
  // to the stored-order input inside each salient partition; the weight is quantized as W·R.
  std::string transform;
  uint64_t transform_seed = 0;
  // Fraction of the weights pruned: inside the GPTQ pass (gptq: SparseGPT) or by Wanda's score
  // before it (obr-rtn, obr-gptq); with sparsity_pattern "2:4", 2 of every 4 columns of each row.
  double sparsity = 0;
  std::string sparsity_pattern;  // "" (unstructured) | "2:4"
};

// The weight quantizers a site can name: rtn, gptq (SparseGPT with a sparsity), billm, slim-llm,
// obr-rtn, obr-gptq, ptq161; and whether one prunes (takes a sparsity).
const std::vector<std::string>& weight_methods();
bool is_weight_method(const std::string& m);
bool method_prunes(const std::string& m);
// The Plan-level checks of a scheme's method, sparsity and pattern; errors name `where`.
void validate_scheme(const SiteScheme& s, const std::string& where);

// The JSON of a transform, {"kind", "seed", "mode": "online"}, as Plans and checkpoints write it
// (null when there is none), and its reader, which names `where` and `what` in its errors.
nlohmann::json transform_to_json(const SiteScheme& s);
void transform_from_json(const nlohmann::json& j, SiteScheme& s, const std::string& where, const std::string& what);

struct SitePlan : SiteScheme {
  // Stored column order: an explicit permutation of the channels the site reads, or a rule resolved
  // from calibration statistics at apply time ("mean_abs": ascending mean |x|, Atom's order), or
  // neither (keep the current order).
  torch::Tensor order;  // int64, source numbering
  std::string order_rule;  // "" | "mean_abs" | "max_abs" (ascending max |x|: PTQ1.61's salience)
  // Which channels stay at high precision: an explicit set (source numbering) or the last
  // `salient_count` channels of the order (count < 0: round(salient_fraction * in)).
  torch::Tensor salient;  // int64, or undefined
  int64_t salient_count = -1;
  double salient_fraction = 0.0;

  bool needs_statistics() const { return !order_rule.empty() || needs_hessian() || method == "ptq161"; }
  bool needs_hessian() const { return method != "rtn" && method != "ptq161"; }
  bool needs_samples() const { return method == "slim-llm"; }
};

struct GptqSettings {
  double damp = 0.01;
  int64_t block_size = 128;
  bool act_order = false;
  bool true_sequential = true;  // q/k/v, then o, then gate/up, then down, re-collecting inputs
};

struct Plan {
  std::string recipe = "hand";               // what made it: "rtn", "gptq", "atom", "masks", ...
  std::map<std::string, SitePlan> sites;     // block linears; a site not listed stays as it is ...
  std::optional<SitePlan> default_site;      // ... unless a default is given for every block linear
  std::map<int, BlockPruning> blocks;        // structured pruning, applied before quantization
  QuantSpec kv{16};                          // KV cache (per token and head), bits 16 = none
  GptqSettings gptq;
  int refine_epochs = 20;  // block-wise refinement of learned scales (PTQ1.61): epochs over the windows
  nlohmann::json provenance = nlohmann::json::object();  // free-form: options, search run, ...

  bool needs_calibration() const;
  // The plan with default_site written out for every block linear not listed.
  Plan expanded(const Model& model) const;
};

// JSON with index lists inline (a Plan file). A "default" site entry is merged under every listed
// site and applies to every block linear the file does not list.
nlohmann::json plan_to_json(const Plan& plan);
Plan plan_from_json(const nlohmann::json& j, const std::string& where);
Plan read_plan_file(const std::string& path);
void write_plan_file(const std::string& path, const Plan& plan, OnExisting on_existing = OnExisting::kRefuse);

// Checks a Plan against a model before any work: every named site exists, index lists are in
// range and without repeats, an order is a permutation of what its site reads (after the plan's
// own pruning), salient sets lie inside it, bit widths are storable (weights 1..8, activations
// 1..8 or 16), groups and clips valid. Errors are one line naming `where` and the site.
void validate_plan(const Plan& plan, const Model& model, const std::string& where);

// A quantizer spec as JSON and back (bits required; symmetric, group_size, clips default).
nlohmann::json quant_spec_to_json(const QuantSpec& s);
QuantSpec quant_spec_from_json(const nlohmann::json& j, const std::string& where);

}  // namespace toga
