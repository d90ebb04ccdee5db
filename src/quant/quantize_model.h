// Post-training quantization of a whole model: the recipe every fixed-precision method shares.
// Observe the linear sites on calibration windows, reorder input channels by mean |x| (Atom),
// quantize each weight (RTN or GPTQ) with mixed-precision partitions (the last k reordered channels
// salient), and attach activation and KV-cache fake quantizers. A later search sets k per layer.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model.h"
#include "quant/quantizer.h"

namespace toga {

struct QuantizeOptions {
  std::string method = "rtn";  // "rtn" | "gptq"
  QuantSpec weight_low{4, true, 0};
  QuantSpec weight_high{8, true, 0};
  QuantSpec act_low{16};       // bits 16 = weight-only
  QuantSpec act_high{8, true, 0};
  QuantSpec kv{16};            // KV-cache quantizer (group = head_dim), bits 16 = none
  double salient_fraction = 0.0;                  // k = round(fraction * in_features) ...
  std::map<std::string, int64_t> salient_counts;  // ... unless a site is listed here
  bool reorder = true;         // sort input channels by mean |x| so the salient ones are last
  // GPTQ
  double damp = 0.01;
  int64_t block_size = 128;
  bool act_order = false;
  bool true_sequential = true;  // q/k/v, then o, then gate/up, then down, re-collecting inputs
  bool progress = true;

  bool needs_calibration() const { return method == "gptq" || reorder; }
  nlohmann::json to_json() const;
};

// The outcome for one linear site: what the checkpoint stores and the runtime reads.
struct QuantizedLinear {
  std::string site;
  QuantizedWeight weight;  // columns in `perm` order
  torch::Tensor perm;      // int64 [in]: stored column j is original input channel perm[j]
  int64_t salient = 0;     // the last `salient` stored columns use the high partition
  QuantSpec weight_low, weight_high;
  QuantSpec act_low, act_high;
  double gptq_loss = 0;    // 0 for RTN
};

struct QuantizationReport {
  std::vector<QuantizedLinear> linears;
  double seconds = 0;
  // Bits per quantized weight: codes only, and with scales/zeros (fp16 each) and permutations.
  double weight_bits_codes = 0, weight_bits_total = 0;
  double act_bits = 16;  // average activation bits over the quantized linears' inputs
};

// A quantizer spec as JSON (checkpoints, reports) and back; a malformed or invalid spec is an error
// naming `where`.
nlohmann::json quant_spec_to_json(const QuantSpec& s);
QuantSpec quant_spec_from_json(const nlohmann::json& j, const std::string& where);

// Quantizes every block linear of `model` in place (lm_head and embeddings stay as they are).
// calibration: [n, seqlen] token windows (may be undefined when !needs_calibration()).
QuantizationReport quantize_model(Model& model, const QuantizeOptions& opts, const torch::Tensor& calibration);

// Atom's channel order: ascending mean |x| (stable), so the most salient channels come last.
torch::Tensor salience_order(const torch::Tensor& mean_abs);
// Reorders a site's input channels: columns of the weight permuted, the forward gathers x[..., perm].
// The function the site computes is unchanged.
void permute_site_inputs(LinearSite& site, const torch::Tensor& perm);

// Puts a quantized linear into the model: dequantized weight, permutation, activation quantizer.
void attach_quantized_linear(Model& model, const QuantizedLinear& q);
// KV-cache fake quantization on new keys and values (per token and head).
void attach_kv_quantizer(Model& model, const QuantSpec& kv);

// Average bits as the report defines them, from the stored representation.
void compute_bit_statistics(QuantizationReport& report);

// "W4A16", "W(3.2)A(3.2)", ...: the realized average bits of the codes (salient included).
std::string scheme_name(const QuantizationReport& r);

}  // namespace toga
