// Layer-sharded calibration and GPTQ, for models larger than one machine's memory: the blocks are
// split among the ranks in contiguous ranges, each rank loads only its blocks' linears
// (LoadOptions::layer_begin/end), and the calibration windows' hidden states travel rank to rank
// (c10d send/recv) — rank 0 embeds them, runs its blocks (statistics, Hessians, GPTQ) and passes
// the quantized blocks' outputs on, as the single-process loop would to its next block. Every rank
// then sends its quantized linears to rank 0, which writes the checkpoint.
//
// The result is bit for bit the single process's: the same blocks see the same inputs in the same
// order; only where they run differs. The ranks work one after another (sequential GPTQ calibrates
// each block on the previous blocks' quantized outputs), so this buys memory, not speed.
#pragma once

#include "dist/collective.h"
#include "quant/apply_plan.h"
#include "quant/calibration.h"

namespace toga {

// Rank `rank`'s blocks of `layers`: contiguous, sizes differing by at most one, the larger shares
// on the last ranks (rank 0 also holds the embedding and assembles the output).
std::pair<int, int> layer_range(int layers, int world_size, int rank);

// This rank's shard of the calibration pipeline over `comm` (the whole model for one process).
// `timeout_seconds` bounds the wait for the previous rank, which runs all earlier blocks first.
LayerShard pipeline_shard(Collective& comm, int layers, double timeout_seconds);

// Rank 0 receives the other ranks' reports (quantized linears and resolved site plans) and merges
// them into its own in layer order, recomputing the bit statistics; the other ranks send theirs.
void gather_reports(Collective& comm, QuantizationReport& report, double timeout_seconds);

// A report's quantized linears and resolved site plans as bytes, and back (what gather_reports
// sends; `where` names the sender in errors).
std::string serialize_report(const QuantizationReport& report);
QuantizationReport deserialize_report(const std::string& bytes, const std::string& where);

}  // namespace toga
