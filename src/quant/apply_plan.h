// apply_plan: the one place where a Plan becomes a compressed model. Prunes the blocks the Plan
// prunes, then, block by block on calibration data (for_each_block_calibrated), resolves each
// site's order and salient set, quantizes its weight (RTN or GPTQ) into stored codes, and attaches
// the result (dequantized weight in stored column order, input index, activation quantizer);
// attaches the KV-cache quantizer. The report holds what the checkpoint stores.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model.h"
#include "quant/calibration.h"
#include "quant/plan.h"
#include "quant/quantizer.h"

namespace toga {

// The outcome for one linear site: what the checkpoint stores and the runtime reads.
struct QuantizedLinear : SiteScheme {
  std::string site;
  QuantizedWeight weight;  // columns in `perm` order
  // int64 [in]: stored column j is the site's input column perm[j] (before quantization: the
  // source channel itself, or the position in the block's pruning index list).
  torch::Tensor perm;
  int64_t salient = 0;     // the last `salient` stored columns use the high partition
  double gptq_loss = 0;    // 0 for RTN
  // The codes bit-packed as the checkpoint stores them (quant/format.h pack_codes), held instead of
  // weight.codes where only writing remains (a layer-sharded run's rank 0 holds every block's codes
  // so: bits/8 bytes per weight instead of 1). Undefined otherwise.
  torch::Tensor packed_codes;
  // Method-specific facts for the report (BiLLM: its bits counted three ways); not stored.
  nlohmann::json details;

  int64_t rows() const { return weight.scales.size(0); }
  int64_t in_features() const { return perm.numel(); }
};

struct QuantizationReport {
  std::vector<QuantizedLinear> linears;
  Plan plan;               // the resolved Plan: explicit orders and salient sets for every site
  double seconds = 0;
  // Bits per quantized weight: codes only, and with scales/zeros (fp16 each) and permutations.
  double weight_bits_codes = 0, weight_bits_total = 0;
  double act_bits = 16;  // average activation bits over the quantized linears' inputs
};

// calibration: [n, seqlen] token windows (may be undefined when !plan.needs_calibration()).
// `where` names the Plan's origin in errors.
// With a partial `shard` (layer-sharded run), only the shard's blocks are quantized and reported
// (dist/layer_shards.h gathers the reports); Plans that prune are refused there.
QuantizationReport apply_plan(Model& model, const Plan& plan, const torch::Tensor& calibration,
                              const std::string& where = "plan", bool progress = true, const LayerShard& shard = {});

// Puts a quantized linear into the model: dequantized weight in stored order, the input index
// (composed with the block's pruning list), the activation quantizer, the dense kernel. The loader
// and apply_plan both go through it.
void attach_quantized_linear(Model& model, const QuantizedLinear& q, bool set_weight = true);
// KV-cache fake quantization on new keys and values (per token and head).
void attach_kv_quantizer(Model& model, const QuantSpec& kv);

// Average bits as the report defines them, from the stored representation.
void compute_bit_statistics(QuantizationReport& report);
// "W4A16", "W(3.2)A(3.2)", ...: the realized average bits of the codes (salient included).
std::string scheme_name(const QuantizationReport& r);

// Atom's channel order: ascending mean |x| (stable), so the most salient channels come last.
torch::Tensor salience_order(const torch::Tensor& mean_abs);

}  // namespace toga
