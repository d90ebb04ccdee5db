// Several processes working on one job (data-parallel search): libtorch's c10d process group over
// Gloo (TCP; CPUs) behind four calls. One process is the degenerate case — every call returns at
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

  // TOGA_WORLD_SIZE, TOGA_RANK, TOGA_MASTER, TOGA_DIST_TIMEOUT (what `toga launch` sets), else
  // torchrun's WORLD_SIZE, RANK, MASTER_ADDR + MASTER_PORT; unset: one process.
  static DistributedOptions from_environment();
  void validate() const;
};

// A TCP port the kernel just handed out on loopback: free now, and very likely still free when
// rank 0 binds it a moment later (`toga launch`, tests, benchmarks).
int free_loopback_port();

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

  // Totals since construction: seconds spent in collectives and bytes each rank contributed.
  double seconds() const { return seconds_; }
  double bytes() const { return bytes_; }

 private:
  struct Impl;
  template <typename Op>
  void on_host(torch::Tensor& t, const std::string& what, Op op);
  DistributedOptions options_;
  std::unique_ptr<Impl> impl_;
  double seconds_ = 0, bytes_ = 0;
};

}  // namespace toga
