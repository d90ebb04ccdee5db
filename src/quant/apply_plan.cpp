#include "quant/apply_plan.h"

#include <cmath>

#include "model/linear_kernel.h"
#include "quant/billm.h"
#include "quant/calibration.h"
#include "quant/gptq.h"
#include "quant/obr.h"
#include "quant/ptq161.h"
#include "quant/slim_llm.h"
#include "quant/transforms.h"
#include "util/error.h"
#include "util/progress.h"

namespace toga {

namespace {

// Every 16th calibration token's input is kept for methods that score a layer's outputs (SliM-LLM):
// 2,048 rows of 16 windows of 2,048 tokens.
constexpr int64_t kOutputScoreSampleStride = 16;

// The block pruning index list a site's input index is composed with (undefined = none).
torch::Tensor block_input_index(const Model& m, const std::string& site) {
  const int layer = std::stoi(site.substr(std::string("layers.").size()));
  const Block& b = m.blocks.at(layer);
  const std::string kind = site.substr(site.rfind('.') + 1);
  if (kind == "q_proj" || kind == "k_proj" || kind == "v_proj") return b.attn_in;
  if (kind == "gate_proj" || kind == "up_proj") return b.mlp_in;
  return {};
}

// The source channel of each of the site's current columns (undefined: the columns are the source
// channels): its block's gather list, or, for down_proj of a block whose MLP the Plan prunes, the
// kept intermediate channels (down reads gate/up's compacted output, with no gather).
torch::Tensor source_numbering(const Plan& plan, const LinearSite& s) {
  if (s.in_index.defined()) return s.in_index;
  const std::string suffix = "mlp.down_proj";
  if (s.name.size() > suffix.size() && s.name.compare(s.name.size() - suffix.size(), suffix.size(), suffix) == 0) {
    const auto it = plan.blocks.find(std::stoi(s.name.substr(std::string("layers.").size())));
    if (it != plan.blocks.end() && it->second.mlp_inner.defined()) return it->second.mlp_inner;
  }
  return {};
}

// Column positions (into the site's current, unquantized columns, numbered by `source`) of source
// channels `ids`.
torch::Tensor columns_of(const LinearSite& s, const torch::Tensor& source, const torch::Tensor& ids, const std::string& where) {
  const auto dev = s.weight.device();
  if (!source.defined()) return ids.to(dev, torch::kLong);
  const auto index = source.to(torch::kCPU);
  const auto want = ids.to(torch::kCPU, torch::kLong);
  const auto pos = torch::searchsorted(index, want).clamp_max(index.numel() - 1);
  if (!torch::equal(index.index_select(0, pos), want))
    fail_file(where, "site '{}': the Plan names channels its block does not read", s.name);
  return pos.to(dev);
}

QuantizedLinear quantize_site(const LinearSite& s, const torch::Tensor& source, const SitePlan& p, const SiteStatistics* st,
                              const GptqSettings& g, const std::string& where) {
  if (s.act.active() || s.kernel || (s.in_index.defined() && !s.in_index.equal(std::get<0>(torch::sort(s.in_index)))))
    fail_file(where, "site '{}' is already reordered or quantized", s.name);
  const int64_t in = s.in_features();
  const auto dev = s.weight.device();
  const auto long_opts = torch::TensorOptions().dtype(torch::kLong).device(dev);
  // Source statistics restricted to the columns the site has (pruned blocks read a subset).
  auto site_stat = [&](const torch::Tensor& t, bool matrix) {
    if (!s.in_index.defined()) return t;
    const auto idx = s.in_index.to(t.device());
    return matrix ? t.index_select(0, idx).index_select(1, idx) : t.index_select(0, idx);
  };

  QuantizedLinear q;
  q.site = s.name;
  static_cast<SiteScheme&>(q) = p;
  // Column order before the salient split.
  torch::Tensor order = torch::arange(in, long_opts);
  if (p.order.defined()) {
    order = columns_of(s, source, p.order, where);
  } else if (p.order_rule == "mean_abs" || p.order_rule == "max_abs") {
    if (!st) fail_file(where, "site '{}': ordering by {} needs calibration statistics", s.name, p.order_rule);
    order = salience_order(site_stat(p.order_rule == "mean_abs" ? st->mean_abs() : st->abs_max, false)).to(dev);
  }
  // Salient channels go last, each part keeping the order's sequence.
  if (p.salient.defined()) {
    const auto salient_cols = columns_of(s, source, p.salient, where);
    const auto is_salient = torch::isin(order, salient_cols);
    q.salient = is_salient.sum().item<int64_t>();
    order = torch::cat({order.masked_select(is_salient.logical_not()), order.masked_select(is_salient)});
  } else {
    q.salient = p.salient_count >= 0 ? p.salient_count : std::llround(p.salient_fraction * double(in));
  }
  if (q.salient < 0 || q.salient > in) fail_file(where, "site '{}': salient count {} outside [0, {}]", s.name, q.salient, in);
  q.perm = order;
  auto w = s.weight.to(torch::kFloat32).index_select(1, q.perm);
  torch::Tensor rot;
  if (!q.transform.empty()) {
    try {
      rot = partitioned_transform(q.transform, in, q.salient, q.transform_seed).to(dev);
    } catch (const Error& e) {
      fail_file(where, "site '{}': {}", s.name, e.what());
    }
    w = torch::matmul(w, rot);
  }
  // The Hessian of the site's stored-order (and transformed) input, for every method but RTN.
  torch::Tensor h;
  if (p.needs_hessian()) {
    if (!st || !st->xtx.defined()) fail_file(where, "site '{}': method {} needs a calibration Hessian", s.name, p.method);
    h = site_stat(st->hessian(), true).to(torch::kFloat32).to(dev).index_select(0, q.perm).index_select(1, q.perm);
    if (rot.defined()) h = torch::matmul(torch::matmul(rot.t(), h), rot);  // the Hessian of x·R
  }
  if (p.method == "billm") {
    if (q.salient != 0 || rot.defined() || p.sparsity > 0)
      fail_file(where, "site '{}': BiLLM picks its own salient columns: no salient set, transform or sparsity", s.name);
    auto r = billm_quantize(w, h);
    q.weight = std::move(r.stored);
    q.perm = q.perm.index_select(0, r.perm.to(dev));
    q.gptq_loss = r.loss;
    q.details = {{"bits_paper", r.bits_paper}, {"bits_with_flags", r.bits_with_flags}, {"bits_total", r.bits_total},
                 {"salient_columns", r.salient.sum().item<int64_t>()}};
  } else if (p.method == "slim-llm") {
    if (q.salient != 0) fail_file(where, "site '{}': SliM-LLM allocates bits per column group: no salient channels", s.name);
    if (!st->samples.defined()) fail_file(where, "site '{}': SliM-LLM needs a sample of the calibration inputs", s.name);
    torch::Tensor x = site_stat(st->samples.t(), false).t().to(dev).index_select(1, q.perm);
    if (rot.defined()) x = torch::matmul(x, rot);
    GptqOptions o;
    o.block_size = g.block_size;
    o.damp = g.damp;
    auto r = slim_llm_quantize(w, h, x, p.weight_low, o);
    q.weight = std::move(r.gptq.weight);
    q.gptq_loss = r.gptq.loss;
    q.details = {{"group_bits", r.allocation.bits}, {"groups_shifted", r.allocation.shifted},
                 {"kl_scores", r.allocation.scores}, {"average_bits", r.average_bits}};
  } else if (p.method == "ptq161") {
    if (rot.defined() || p.sparsity > 0)
      fail_file(where, "site '{}': PTQ1.61 takes no transform or sparsity", s.name);
    q.weight = ptq161_initial(w, q.salient, p.weight_high);  // refined block by block (apply_plan)
  } else if (p.method == "obr-rtn" || p.method == "obr-gptq") {
    if (q.salient != 0) fail_file(where, "site '{}': OBR quantizes every kept weight on one grid: no salient channels", s.name);
    ObrOptions o;
    o.sparsity = p.sparsity;
    o.two_four = p.sparsity_pattern == "2:4";
    o.gptq = p.method == "obr-gptq";
    o.damp = g.damp;
    o.block_size = g.block_size;
    auto r = obr_quantize(w, h, p.weight_low, o);
    q.weight = std::move(r.weight);
    q.gptq_loss = r.loss;
    q.details = {{"kept", r.keep.to(torch::kDouble).mean().item<double>()}};
  } else if (p.method == "gptq") {
    GptqOptions o;
    o.low = p.weight_low;
    o.high = p.weight_high;
    o.k_salient = q.salient;
    o.block_size = g.block_size;
    o.damp = g.damp;
    o.act_order = g.act_order;
    if (p.sparsity_pattern == "2:4") o.prune_n = 2, o.prune_m = 4;
    else o.sparsity = p.sparsity;
    auto r = gptq_quantize(w, h, o);
    q.weight = std::move(r.weight);
    q.perm = q.perm.index_select(0, r.perm.to(dev));
    q.gptq_loss = r.loss;
  } else {
    q.weight = quantize_weight_mixed(w, q.salient, p.weight_low, p.weight_high);
  }
  // The checkpoint stores scales and zero points in fp16: round them now so that the model in
  // memory and the one loaded back are the same.
  q.weight.scales = q.weight.scales.to(torch::kFloat16).to(torch::kFloat32);
  q.weight.zeros = q.weight.zeros.to(torch::kFloat16).to(torch::kFloat32);
  if (q.weight.levels.defined()) q.weight.levels = q.weight.levels.to(torch::kFloat16).to(torch::kFloat32);
  return q;
}

// The resolved site plan: explicit order (stored column order, source numbering) and salient set.
SitePlan resolved(const torch::Tensor& source, const QuantizedLinear& q, const SitePlan& p) {
  SitePlan r = p;
  const auto ids = source.defined() ? source.index_select(0, q.perm.to(source.device())) : q.perm;
  r.order = ids.to(torch::kCPU);
  r.order_rule.clear();
  r.salient = r.order.narrow(0, r.order.numel() - q.salient, q.salient).clone();
  r.salient_count = -1;
  return r;
}

}  // namespace

torch::Tensor salience_order(const torch::Tensor& mean_abs) {
  // A stable sort keeps sites that read the same input (q/k/v, gate/up) on the same permutation,
  // which the runtime needs to fuse the reorder into the producer.
  return std::get<1>(torch::sort(mean_abs, /*stable=*/true, /*dim=*/0, /*descending=*/false));
}

void attach_quantized_linear(Model& model, const QuantizedLinear& q, bool set_weight) {
  LinearSite& s = model.site(q.site);
  const auto dev = s.weight.device();
  if (set_weight) s.weight = dequantize(q.weight).to(dev, s.weight.scalar_type()).contiguous();
  const auto block_index = block_input_index(model, q.site);
  const auto perm = q.perm.to(dev);
  // A copy: the site must not alias the report's permutation (callers edit reports).
  s.in_index = block_index.defined() ? block_index.to(dev).index_select(0, perm) : perm.clone();
  s.in_transform = q.transform.empty() ? torch::Tensor()
                                        : partitioned_transform(q.transform, q.perm.numel(), q.salient, q.transform_seed)
                                              .to(dev, s.weight.scalar_type());
  s.act = {q.act_low, q.act_high, q.salient};
  if (!s.act.active()) s.act = {};
  s.kernel = choose_linear_kernel("dense");
}

void attach_kv_quantizer(Model& model, const QuantSpec& kv) {
  if (!kv.quantized()) {
    model.kv_transform = nullptr;
    model.kv_spec = QuantSpec{16};
    return;
  }
  QuantSpec spec = kv;
  spec.group_size = model.config.head_dim;  // one scale per token and head
  model.kv_transform = [spec](const torch::Tensor& x) { return fake_quantize(x, spec); };
  model.kv_spec = spec;
}

QuantizationReport apply_plan(Model& m, const Plan& plan_in, const torch::Tensor& calibration, const std::string& where,
                              bool show_progress, const LayerShard& shard) {
  torch::NoGradGuard no_grad;
  const Plan plan = plan_in.expanded(m);
  validate_plan(plan, m, where);
  if (!shard.whole(m) && !plan.blocks.empty())
    fail_file(where, "a layer-sharded run cannot apply a Plan that prunes: write the pruned model first");
  QuantizationReport report;
  report.plan = plan;
  report.plan.sites.clear();
  for (const auto& [layer, keep] : plan.blocks) prune_block(m, layer, keep);
  attach_kv_quantizer(m, plan.kv);  // calibration sees the quantized cache, as inference will

  auto finish_site = [&](LinearSite& s, const SiteStatistics* st) {
    const SitePlan& p = plan.sites.at(s.name);
    const torch::Tensor source = source_numbering(plan, s);
    report.linears.push_back(quantize_site(s, source, p, st, plan.gptq, where));
    report.plan.sites[s.name] = resolved(source, report.linears.back(), p);
    attach_quantized_linear(m, report.linears.back());
    return report.linears.back().gptq_loss;
  };
  Progress progress(plan.recipe, shard.end_of(m) - shard.begin, show_progress);
  if (!plan.needs_calibration()) {
    for (int l = shard.begin; l < shard.end_of(m); ++l) {
      for (auto* s : m.blocks[l].sites())
        if (plan.sites.count(s->name)) finish_site(*s, nullptr);
      progress.update(l + 1 - shard.begin, fmt::format("layer {}", l));
    }
  } else {
    if (!calibration.defined() || calibration.dim() != 2)
      fail_file(where, "the Plan orders channels by activations or uses GPTQ: it needs calibration windows");
    // PTQ1.61 learns each block's scales against the full-precision block, which needs the FP
    // model's hidden states beside the quantized ones.
    bool refine = false;
    for (const auto& [name, sp] : plan.sites) refine = refine || sp.method == "ptq161";
    if (refine && !shard.whole(m)) fail_file(where, "PTQ1.61's block refinement needs the whole model in one process");
    std::vector<torch::Tensor> fp_hidden;
    for_each_block_calibrated(m, calibration, [&](BlockCalibration& calib) {
      const int layer = calib.layer();
      Block fp_block;
      if (refine) {
        fp_block = m.blocks[layer];
        if (fp_hidden.empty())
          for (const auto& h : calib.inputs()) fp_hidden.push_back(h.clone());
      }
      const size_t first_linear = report.linears.size();
      // A layer-sharded rank's clock starts when its input arrives, not while it waits for it.
      if (calib.layer() == shard.begin && shard.begin > 0)
        progress = Progress(plan.recipe, shard.end_of(m) - shard.begin, show_progress);
      Block& b = m.blocks[calib.layer()];
      // Input groups with a planned site; true sequential GPTQ observes one input at a time, after
      // the sites before it are quantized.
      std::vector<std::vector<LinearSite*>> groups;
      bool hessian = false;
      for (auto& g : b.input_groups()) {
        std::vector<LinearSite*> planned;
        for (auto* s : g)
          if (plan.sites.count(s->name)) {
            planned.push_back(s);
            hessian = hessian || plan.sites.at(s->name).needs_hessian();
          }
        if (!planned.empty()) groups.push_back(planned);
      }
      std::vector<std::vector<std::vector<LinearSite*>>> passes;
      if (hessian && plan.gptq.true_sequential)
        for (const auto& g : groups) passes.push_back({g});
      else if (!groups.empty())
        passes.push_back(groups);
      double loss = 0;
      for (const auto& pass : passes) {
        bool needs_stats = false, needs_samples = false;
        for (const auto& g : pass)
          for (auto* s : g) {
            needs_stats = needs_stats || plan.sites.at(s->name).needs_statistics();
            needs_samples = needs_samples || plan.sites.at(s->name).needs_samples();
          }
        std::unique_ptr<StatisticsCollector> stats;
        if (needs_stats) stats = calib.observe(pass, hessian, needs_samples ? kOutputScoreSampleStride : 0);
        for (const auto& g : pass)
          for (auto* s : g) loss += finish_site(*s, stats ? &stats->at(s->name) : nullptr);
      }
      std::string refined;
      if (refine) {
        auto fp_outputs = [&](const std::vector<torch::Tensor>& in) {
          std::swap(m.blocks[layer], fp_block);
          std::vector<torch::Tensor> out;
          try {
            for (const auto& h : in) out.push_back(m.block_forward(layer, h, 0));
          } catch (...) {
            std::swap(m.blocks[layer], fp_block);
            throw;
          }
          std::swap(m.blocks[layer], fp_block);
          return out;
        };
        std::vector<QuantizedLinear*> sites;
        for (size_t i = first_linear; i < report.linears.size(); ++i)
          if (report.linears[i].method == "ptq161") sites.push_back(&report.linears[i]);
        std::vector<torch::Tensor> fp_out = fp_outputs(fp_hidden);
        if (!sites.empty()) {
          Ptq161Training t;
          t.epochs = plan.refine_epochs;
          const auto losses = ptq161_refine_block(m, layer, sites, calib.inputs(), {fp_out, fp_outputs(calib.inputs())}, t);
          if (!losses.empty()) refined = fmt::format(" PTQ1.61 loss {:.4g} → {:.4g}", losses.front(), losses.back());
        }
        fp_hidden = std::move(fp_out);
      }
      progress.update(calib.layer() + 1 - shard.begin,
                      (hessian ? fmt::format("layer {} GPTQ loss {:.4g}", calib.layer(), loss)
                               : fmt::format("layer {}", calib.layer())) + refined);
    }, shard);
  }
  compute_bit_statistics(report);
  report.seconds = progress.elapsed_seconds();
  progress.finish(scheme_name(report));
  return report;
}

void compute_bit_statistics(QuantizationReport& r) {
  double weights = 0, code_bits = 0, param_bits = 0, act_in = 0, act_bits = 0;
  for (const auto& q : r.linears) {
    const int64_t rows = q.rows(), in = q.in_features();
    weights += double(rows * in);
    for (const auto& g : q.weight.groups) {
      code_bits += double(rows) * double(g.col_end - g.col_begin) * g.bits;
      // fp16 scale per row and group, plus an fp16 zero where the quantizer is not symmetric; a
      // codebook group's 2^bits fp16 levels per row.
      param_bits += double(rows) * (g.codebook ? 16.0 * double(1 << g.bits) : g.symmetric ? 16.0 : 32.0);
    }
    param_bits += 16.0 * double(in);  // the permutation
    if (q.weight.column_scales.defined()) param_bits += 16.0 * double(in);
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
