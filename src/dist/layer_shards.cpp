#include "dist/layer_shards.h"

#include <algorithm>

#include <torch/serialize.h>

#include "quant/format.h"
#include "quant/plan.h"
#include "util/error.h"

namespace toga {

std::pair<int, int> layer_range(int layers, int world_size, int rank) {
  if (world_size < 1 || rank < 0 || rank >= world_size) fail("rank {} is not one of {} processes", rank, world_size);
  if (layers < world_size)
    fail("a layer-sharded run needs a block per process: {} processes for {} blocks", world_size, layers);
  const int base = layers / world_size, extra = layers % world_size;
  // The last `extra` ranks take one block more.
  auto begin_of = [&](int r) { return r * base + std::max(0, r - (world_size - extra)); };
  return {begin_of(rank), begin_of(rank + 1)};
}

LayerShard pipeline_shard(Collective& comm, int layers, double timeout_seconds) {
  const auto [begin, end] = layer_range(layers, comm.world_size(), comm.rank());
  LayerShard shard;
  shard.begin = begin;
  shard.end = end;
  Collective* c = &comm;
  if (begin > 0)
    shard.receive = [c, begin = begin, timeout_seconds](std::vector<torch::Tensor>& hidden) {
      for (size_t i = 0; i < hidden.size(); ++i)
        c->recv(hidden[i], c->rank() - 1, fmt::format("receiving batch {} of block {}'s input", i, begin),
                timeout_seconds);
    };
  if (end < layers)
    shard.send = [c, end = end, timeout_seconds](const std::vector<torch::Tensor>& hidden) {
      for (size_t i = 0; i < hidden.size(); ++i)
        c->send(hidden[i].contiguous(), c->rank() + 1, fmt::format("sending batch {} of block {}'s input", i, end),
                timeout_seconds);
    };
  return shard;
}

std::string serialize_report(const QuantizationReport& report) {
  nlohmann::json linears = nlohmann::json::array();
  c10::List<torch::Tensor> tensors;
  for (const auto& q : report.linears) {
    nlohmann::json groups = nlohmann::json::array();
    for (const auto& g : q.weight.groups) groups.push_back({g.col_begin, g.col_end, g.bits, g.symmetric, g.codebook});
    linears.push_back(
        {{"site", q.site}, {"salient", q.salient}, {"gptq_loss", q.gptq_loss}, {"groups", groups}, {"details", q.details}});
    // Packed codes: what rank 0 keeps until it writes (bits/8 bytes per weight, not 1).
    const auto levels = q.weight.levels.defined() ? q.weight.levels : torch::empty({0});
    const auto column_scales = q.weight.column_scales.defined() ? q.weight.column_scales : torch::empty({0});
    for (const auto& t : {q.packed_codes.defined() ? q.packed_codes : pack_codes(q.weight), q.weight.scales, q.weight.zeros,
                          q.perm, levels, column_scales})
      tensors.push_back(t.to(torch::kCPU));
  }
  const nlohmann::json meta = {{"plan", plan_to_json(report.plan)}, {"linears", linears}};
  const auto bytes = torch::pickle_save(c10::ivalue::Tuple::create({meta.dump(), tensors}));
  return std::string(bytes.begin(), bytes.end());
}

QuantizationReport deserialize_report(const std::string& bytes, const std::string& where) {
  QuantizationReport r;
  try {
    const auto tuple = torch::pickle_load(std::vector<char>(bytes.begin(), bytes.end())).toTuple();
    const auto meta = nlohmann::json::parse(tuple->elements().at(0).toStringRef());
    const auto tensors = tuple->elements().at(1).toTensorList();
    r.plan = plan_from_json(meta.at("plan"), where);
    size_t t = 0;
    for (const auto& j : meta.at("linears")) {
      QuantizedLinear q;
      q.site = j.at("site").get<std::string>();
      static_cast<SiteScheme&>(q) = r.plan.sites.at(q.site);
      q.salient = j.at("salient").get<int64_t>();
      q.gptq_loss = j.at("gptq_loss").get<double>();
      q.details = j.value("details", nlohmann::json());
      for (const auto& g : j.at("groups"))
        q.weight.groups.push_back(
            {g.at(0).get<int64_t>(), g.at(1).get<int64_t>(), g.at(2).get<int>(), g.at(3).get<bool>(), g.at(4).get<bool>()});
      q.packed_codes = tensors.get(t++);
      q.weight.scales = tensors.get(t++);
      q.weight.zeros = tensors.get(t++);
      q.perm = tensors.get(t++);
      if (const auto levels = tensors.get(t++); q.weight.has_codebook()) q.weight.levels = levels;
      if (const auto column_scales = tensors.get(t++); column_scales.numel() > 0) q.weight.column_scales = column_scales;
      r.linears.push_back(std::move(q));
    }
    if (t != tensors.size()) fail("{} tensors for {} linears", tensors.size(), r.linears.size());
    for (const auto& q : r.linears)
      if (q.packed_codes.dim() != 2 || q.packed_codes.size(0) != q.rows() ||
          q.packed_codes.size(1) != packed_row_bytes(q.weight.groups) || q.weight.groups.empty() ||
          q.weight.groups.back().col_end != q.in_features())
        fail("site '{}': packed codes, scales and permutation disagree", q.site);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail("{}: the quantization report is corrupt: {}", where, e.what());
  }
  return r;
}

void gather_reports(Collective& comm, QuantizationReport& report, double timeout_seconds) {
  if (!comm.distributed()) return;
  if (!comm.is_root()) {
    comm.send_bytes(serialize_report(report), 0, "sending the quantized blocks to rank 0", timeout_seconds);
    return;
  }
  // Rank 0's own codes packed as well: until the checkpoint is written only the packed form is needed.
  for (auto& q : report.linears) {
    q.packed_codes = pack_codes(q.weight);
    q.weight.codes = torch::Tensor();
  }
  for (int r = 1; r < comm.world_size(); ++r) {
    const std::string where = fmt::format("rank {}", r);
    auto part = deserialize_report(comm.recv_bytes(r, fmt::format("receiving rank {}'s quantized blocks", r), timeout_seconds),
                                   where);
    for (auto& q : part.linears) {
      if (!part.plan.sites.count(q.site)) fail("{} sent site '{}' without its plan", where, q.site);
      report.plan.sites[q.site] = part.plan.sites.at(q.site);
      report.linears.push_back(std::move(q));
    }
  }
  compute_bit_statistics(report);
}

}  // namespace toga
