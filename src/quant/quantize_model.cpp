#include "quant/quantize_model.h"

#include <cmath>

#include "quant/calibration.h"
#include "quant/gptq.h"
#include "util/error.h"
#include "util/progress.h"

namespace toga {

namespace {

int64_t salient_count(const QuantizeOptions& o, const LinearSite& s) {
  const int64_t in = s.in_features();
  auto it = o.salient_counts.find(s.name);
  const int64_t k = it != o.salient_counts.end() ? it->second : std::llround(o.salient_fraction * double(in));
  if (k < 0 || k > in) fail("salient count {} for '{}' is outside [0, {}]", k, s.name, in);
  return k;
}

QuantizedLinear quantize_site(const LinearSite& s, const SiteStatistics* st, const QuantizeOptions& o) {
  if (s.in_perm.defined()) fail("site '{}' is already reordered/quantized", s.name);
  QuantizedLinear q;
  q.site = s.name;
  q.salient = salient_count(o, s);
  q.weight_low = o.weight_low;
  q.weight_high = o.weight_high;
  q.act_low = o.act_low;
  q.act_high = o.act_high;
  const int64_t in = s.in_features();
  const auto dev = s.weight.device();
  q.perm = torch::arange(in, torch::TensorOptions().dtype(torch::kLong).device(dev));
  if (o.reorder) {
    if (!st) fail("reordering '{}' needs calibration statistics", s.name);
    q.perm = salience_order(st->mean_abs()).to(dev);
  }
  const auto w = s.weight.to(torch::kFloat32).index_select(1, q.perm);
  if (o.method == "gptq") {
    if (!st || !st->xtx.defined()) fail("GPTQ for '{}' needs a calibration Hessian", s.name);
    const auto h = st->hessian().to(torch::kFloat32).to(dev).index_select(0, q.perm).index_select(1, q.perm);
    GptqOptions g;
    g.low = o.weight_low;
    g.high = o.weight_high;
    g.k_salient = q.salient;
    g.block_size = o.block_size;
    g.damp = o.damp;
    g.act_order = o.act_order;
    auto r = gptq_quantize(w, h, g);
    q.weight = std::move(r.weight);
    q.perm = q.perm.index_select(0, r.perm.to(dev));
    q.gptq_loss = r.loss;
  } else if (o.method == "rtn") {
    q.weight = quantize_weight_mixed(w, q.salient, o.weight_low, o.weight_high);
  } else {
    fail("unknown quantization method '{}' (use rtn or gptq)", o.method);
  }
  // The checkpoint stores scales and zero points in fp16: round them now so that the model in
  // memory and the one loaded back are the same.
  q.weight.scales = q.weight.scales.to(torch::kFloat16).to(torch::kFloat32);
  q.weight.zeros = q.weight.zeros.to(torch::kFloat16).to(torch::kFloat32);
  return q;
}

// Runs the calibration windows through block `layer` in batches; observers may end a pass early.
void run_block(const Model& m, int layer, std::vector<torch::Tensor>& hidden, bool keep_outputs) {
  for (auto& h : hidden) {
    try {
      auto out = m.block_forward(layer, h, 0);
      if (keep_outputs) h = out;
    } catch (const StopForward&) {
      if (keep_outputs) throw;
    }
  }
}

// Adds an observer to each site that ends the forward once all of them have seen their input.
class StopAfter {
 public:
  explicit StopAfter(std::vector<LinearSite*> sites) : sites_(std::move(sites)), seen_(std::make_shared<size_t>(0)) {
    auto seen = seen_;
    const size_t n = sites_.size();
    for (auto* s : sites_)
      s->observers.push_back([seen, n](const LinearSite&, const torch::Tensor&) {
        if (++*seen == n) {
          *seen = 0;
          throw StopForward{};
        }
      });
  }
  ~StopAfter() {
    for (auto* s : sites_) s->observers.pop_back();
  }

 private:
  std::vector<LinearSite*> sites_;
  std::shared_ptr<size_t> seen_;
};

}  // namespace

torch::Tensor salience_order(const torch::Tensor& mean_abs) {
  // A stable sort keeps sites that read the same input (q/k/v, gate/up) on the same permutation,
  // which the runtime needs to fuse the reorder into the producer.
  return std::get<1>(torch::sort(mean_abs, /*stable=*/true, /*dim=*/0, /*descending=*/false));
}

void permute_site_inputs(LinearSite& site, const torch::Tensor& perm) {
  if (site.in_perm.defined()) fail("site '{}' is already reordered", site.name);
  site.weight = site.weight.index_select(1, perm.to(site.weight.device())).contiguous();
  site.in_perm = perm.to(site.weight.device());
}

nlohmann::json quant_spec_to_json(const QuantSpec& s) {
  return {{"bits", s.bits},           {"symmetric", s.symmetric},   {"group_size", s.group_size},
          {"clip_ratio", s.clip_ratio}, {"mse_clip", s.mse_clip}, {"binary_centered", s.binary_centered}};
}

QuantSpec quant_spec_from_json(const nlohmann::json& j, const std::string& where) {
  try {
    QuantSpec s;
    s.bits = j.at("bits").get<int>();
    s.symmetric = j.at("symmetric").get<bool>();
    s.group_size = j.at("group_size").get<int>();
    s.clip_ratio = j.value("clip_ratio", 1.0);
    s.mse_clip = j.value("mse_clip", false);
    s.binary_centered = j.value("binary_centered", false);
    validate(s);
    return s;
  } catch (const nlohmann::json::exception& e) {
    fail_file(where, "malformed quantizer spec {}: {}", j.dump(), e.what());
  } catch (const Error& e) {
    fail_file(where, "invalid quantizer spec {}: {}", j.dump(), e.what());
  }
}

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
          {"damp", damp},
          {"block_size", block_size},
          {"act_order", act_order},
          {"true_sequential", true_sequential}};
}

void attach_quantized_linear(Model& model, const QuantizedLinear& q) {
  LinearSite& s = model.site(q.site);
  s.weight = dequantize(q.weight).to(s.weight.device(), s.weight.scalar_type()).contiguous();
  s.in_perm = q.perm.to(s.weight.device());
  if (q.act_low.quantized() || (q.salient > 0 && q.act_high.quantized())) {
    const QuantSpec low = q.act_low, high = q.act_high;
    const int64_t k = q.salient;
    s.input_transform = [low, high, k](const torch::Tensor& x) { return fake_quantize_activation(x, low, high, k); };
  } else {
    s.input_transform = nullptr;
  }
}

void attach_kv_quantizer(Model& model, const QuantSpec& kv) {
  if (!kv.quantized()) {
    model.kv_transform = nullptr;
    return;
  }
  QuantSpec spec = kv;
  spec.group_size = model.config.head_dim;  // one scale per token and head
  model.kv_transform = [spec](const torch::Tensor& x) { return fake_quantize(x, spec); };
}

QuantizationReport quantize_model(Model& m, const QuantizeOptions& o, const torch::Tensor& calibration) {
  torch::NoGradGuard no_grad;
  validate(o.weight_low);
  validate(o.weight_high);
  validate(o.act_low);
  validate(o.act_high);
  validate(o.kv);
  QuantizationReport report;
  Progress progress(o.method, m.config.num_hidden_layers, o.progress);
  attach_kv_quantizer(m, o.kv);  // calibration sees the quantized cache, as inference will

  if (!o.needs_calibration()) {
    for (auto* s : m.block_sites()) {
      report.linears.push_back(quantize_site(*s, nullptr, o));
      attach_quantized_linear(m, report.linears.back());
    }
  } else {
    if (!calibration.defined() || calibration.dim() != 2) fail("{} quantization needs calibration windows", o.method);
    // Batches of whole windows, ~8k tokens each, bound the attention memory.
    const int64_t per_batch = std::max<int64_t>(1, 8192 / calibration.size(1));
    std::vector<torch::Tensor> hidden;
    for (int64_t i = 0; i < calibration.size(0); i += per_batch)
      hidden.push_back(m.embed_tokens(calibration.narrow(0, i, std::min(per_batch, calibration.size(0) - i))));
    const bool hessian = o.method == "gptq";
    for (int l = 0; l < m.config.num_hidden_layers; ++l) {
      Block& b = m.blocks[l];
      // Sites that read the same input: observed once, statistics shared.
      const std::vector<std::vector<LinearSite*>> inputs = {{&b.q, &b.k, &b.v}, {&b.o}, {&b.gate, &b.up}, {&b.down}};
      std::vector<std::vector<std::vector<LinearSite*>>> passes;  // true sequential: one pass per input
      if (hessian && o.true_sequential) for (const auto& in : inputs) passes.push_back({in});
      else passes.push_back(inputs);
      double loss = 0;
      for (const auto& pass : passes) {
        std::vector<LinearSite*> group;
        for (const auto& in : pass) group.insert(group.end(), in.begin(), in.end());
        StatisticsCollector stats(pass, hessian);
        {
          StopAfter stop(group);
          run_block(m, l, hidden, /*keep_outputs=*/false);
        }
        stats.detach();
        for (auto* s : group) {
          report.linears.push_back(quantize_site(*s, &stats.at(s->name), o));
          loss += report.linears.back().gptq_loss;
          attach_quantized_linear(m, report.linears.back());
        }
      }
      run_block(m, l, hidden, /*keep_outputs=*/true);
      progress.update(l + 1, hessian ? fmt::format("layer {} GPTQ loss {:.4g}", l, loss) : fmt::format("layer {}", l));
    }
  }
  compute_bit_statistics(report);
  report.seconds = progress.elapsed_seconds();
  progress.finish(scheme_name(report));
  return report;
}

void compute_bit_statistics(QuantizationReport& r) {
  double weights = 0, code_bits = 0, param_bits = 0, act_in = 0, act_bits = 0;
  for (const auto& q : r.linears) {
    const int64_t rows = q.weight.codes.size(0), in = q.weight.codes.size(1);
    weights += double(rows * in);
    for (const auto& g : q.weight.groups) {
      code_bits += double(rows) * double(g.col_end - g.col_begin) * g.bits;
      // fp16 scale per row and group, plus an fp16 zero where the quantizer is not symmetric.
      param_bits += double(rows) * (g.symmetric ? 16.0 : 32.0);
    }
    param_bits += 16.0 * double(in);  // the permutation
    const double hi = q.act_high.quantized() ? q.act_high.bits : 16, lo = q.act_low.quantized() ? q.act_low.bits : 16;
    act_in += double(in);
    act_bits += double(q.salient) * (q.salient > 0 ? hi : 0) + double(in - q.salient) * lo;
  }
  r.weight_bits_codes = weights > 0 ? code_bits / weights : 16;
  r.weight_bits_total = weights > 0 ? (code_bits + param_bits) / weights : 16;
  r.act_bits = act_in > 0 ? act_bits / act_in : 16;
}

std::string scheme_name(const QuantizationReport& r) {
  auto fmt_bits = [](double b) {
    const double rounded = std::round(b * 10) / 10;
    return std::abs(rounded - std::round(rounded)) < 1e-9 ? fmt::format("{}", int(std::round(rounded)))
                                                          : fmt::format("({:.1f})", rounded);
  };
  return "W" + fmt_bits(r.weight_bits_codes) + "A" + fmt_bits(r.act_bits);
}

}  // namespace toga
