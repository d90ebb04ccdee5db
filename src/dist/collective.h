// Several processes working on one job (data-parallel search, layer-sharded quantization):
// libtorch's c10d process group over Gloo (TCP; CPUs) or NCCL (CUDA devices) behind a few calls. One process is the degenerate case — every call returns at
// once — so the search has one code path whatever the world size.
//
// Rendezvous is torchrun's: rank 0 serves a TCP store at `master` (ADDR:PORT) that every rank
// connects to; Gloo then opens a pair of sockets between every two ranks. A rank that dies closes
// its sockets, and the others fail in their next collective with an error naming the operation; a
// rank that hangs makes them fail after `timeout_seconds`. Neither case hangs the job.
#pragma once

#include <memory>
#include <string>

#include <torch/torch.h>

namespace toga {

struct DistributedOptions {
  int world_size = 1;
  int rank = 0;
  std::string master = "127.0.0.1:29500";  // rank 0's address and the TCP store's port
  double timeout_seconds = 600;            // a collective waiting longer than this for a peer fails
  // Gloo's network interface (its GLOO_SOCKET_IFNAME); "" = the address this host's name resolves
  // to, or loopback when `master` is a loopback address.
  std::string interface;
  // Where the tensors live: CUDA ranks communicate over NCCL (a TOGA_CUDA build), tensors staying on
  // the GPU; CPU ranks over Gloo.
  torch::Device device = torch::kCPU;

  // TOGA_WORLD_SIZE, TOGA_RANK, TOGA_MASTER, TOGA_DIST_TIMEOUT (what `toga launch` sets), else
  // torchrun's WORLD_SIZE, RANK, MASTER_ADDR + MASTER_PORT; unset: one process.
  static DistributedOptions from_environment();
  void validate() const;
};

// A TCP port the kernel just handed out on loopback: free now, and very likely still free when
// rank 0 binds it a moment later (`toga launch`, tests, benchmarks).
int free_loopback_port();

// A short hex fingerprint (FNV-1a, 64 bits) of bytes, for comparing large inputs across ranks.
std::string fingerprint(const void* data, size_t bytes);

class Collective {
 public:
  explicit Collective(const DistributedOptions& options = {});
  ~Collective();
  Collective(const Collective&) = delete;
  Collective& operator=(const Collective&) = delete;

  int rank() const { return options_.rank; }
  int world_size() const { return options_.world_size; }
  bool is_root() const { return options_.rank == 0; }
  bool distributed() const { return options_.world_size > 1; }

  // Element-wise sum over the ranks, in place; every rank receives the same bits. `what` names the
  // operation in errors ("step 12's gradient all-reduce").
  void allreduce_sum(torch::Tensor& t, const std::string& what);
  // Rank `root`'s values everywhere. `timeout_seconds` > 0 overrides the default (a broadcast that
  // waits for the root's long computation).
  void broadcast(torch::Tensor& t, const std::string& what, int root = 0, double timeout_seconds = 0);
  // Rank 0's bytes everywhere (a serialized checkpoint): size, then contents.
  std::string broadcast_bytes(const std::string& bytes, const std::string& what, double timeout_seconds = 0);
  void barrier(const std::string& what, double timeout_seconds = 0);
  // The backend in use: "gloo", "nccl", or "none" for one process.
  const std::string& backend() const { return backend_; }
  // Point to point (layer-sharded calibration: hidden states passed rank to rank). `t` must already
  // have the shape and dtype the sender sends; recv fills it. A peer that dies fails the call.
  void send(const torch::Tensor& t, int to, const std::string& what, double timeout_seconds = 0);
  void recv(torch::Tensor& t, int from, const std::string& what, double timeout_seconds = 0);
  void send_bytes(const std::string& bytes, int to, const std::string& what, double timeout_seconds = 0);
  std::string recv_bytes(int from, const std::string& what, double timeout_seconds = 0);

  // Stops every rank, each with an error, unless every rank's `mine` (a description of its options
  // and data) equals rank 0's; `job` names what the ranks run in the message ("search").
  void require_same_as_root(const std::string& mine, const std::string& job);

  // Totals since construction: seconds spent in collectives and bytes each rank contributed.
  double seconds() const { return seconds_; }
  double bytes() const { return bytes_; }

 private:
  struct Impl;
  template <typename Op>
  void on_host(torch::Tensor& t, const std::string& what, Op op, double timeout_seconds);
  void check_peer(int peer, const std::string& what) const;
  DistributedOptions options_;
  std::unique_ptr<Impl> impl_;
  double seconds_ = 0, bytes_ = 0;
  std::string backend_ = "none";
};

}  // namespace toga
