#include "dist/collective.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>

#include "util/error.h"

#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace toga {

namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

int parse_int(const std::string& s, const char* name) {
  try {
    size_t used = 0;
    const int v = std::stoi(s, &used);
    if (used == s.size()) return v;
  } catch (const std::exception&) {
  }
  fail("{} must be an integer, got '{}'", name, s);
}

std::pair<std::string, int> split_master(const std::string& master) {
  const auto colon = master.rfind(':');
  if (colon == std::string::npos || colon == 0) fail("the master address must be ADDR:PORT, got '{}'", master);
  const int port = parse_int(master.substr(colon + 1), "the master port");
  if (port < 1 || port > 65535) fail("the master port must be in 1..65535, got {}", port);
  return {master.substr(0, colon), port};
}

std::chrono::milliseconds millis(double seconds) { return std::chrono::milliseconds(int64_t(seconds * 1000)); }

}  // namespace

int free_loopback_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) fail("cannot open a socket to find a free port");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
                  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  close(fd);
  if (!ok) fail("cannot find a free loopback port");
  return ntohs(a.sin_port);
}

DistributedOptions DistributedOptions::from_environment() {
  DistributedOptions o;
  if (!env("TOGA_WORLD_SIZE").empty()) {
    o.world_size = parse_int(env("TOGA_WORLD_SIZE"), "TOGA_WORLD_SIZE");
    o.rank = parse_int(env("TOGA_RANK"), "TOGA_RANK");
    if (!env("TOGA_MASTER").empty()) o.master = env("TOGA_MASTER");
  } else if (!env("WORLD_SIZE").empty()) {
    o.world_size = parse_int(env("WORLD_SIZE"), "WORLD_SIZE");
    o.rank = parse_int(env("RANK"), "RANK");
    o.master = (env("MASTER_ADDR").empty() ? std::string("127.0.0.1") : env("MASTER_ADDR")) + ":" +
               (env("MASTER_PORT").empty() ? std::string("29500") : env("MASTER_PORT"));
  }
  if (!env("TOGA_DIST_TIMEOUT").empty()) o.timeout_seconds = std::stod(env("TOGA_DIST_TIMEOUT"));
  o.interface = env("GLOO_SOCKET_IFNAME");
  return o;
}

void DistributedOptions::validate() const {
  if (world_size < 1) fail("the world size must be at least 1, got {}", world_size);
  if (rank < 0 || rank >= world_size) fail("rank {} is outside 0..{} (world size {})", rank, world_size - 1, world_size);
  if (!(timeout_seconds > 0)) fail("the collective timeout must be positive, got {} s", timeout_seconds);
  if (world_size > 1) split_master(master);
}

#ifdef USE_C10D_GLOO

struct Collective::Impl {
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
#ifdef USE_C10D_NCCL
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> nccl;  // CUDA ranks: tensors stay on their GPU
#endif
  bool on_gpu() const {
#ifdef USE_C10D_NCCL
    return bool(nccl);
#else
    return false;
#endif
  }
  // op(group) on the backend in use; both return the c10d Work to wait on.
  template <typename Op>
  auto run(Op op) {
#ifdef USE_C10D_NCCL
    if (nccl) return op(*nccl);
#endif
    return op(*gloo);
  }
};

namespace {

[[noreturn]] void lost_contact(const DistributedOptions& o, const std::string& what, const std::exception& e) {
  std::string msg = e.what();
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) msg = c->what_without_backtrace();
  fail("rank {} of {}: lost contact with the other processes during {} ({}). A process of the run died, hung for "
       "more than {} s or cannot be reached; restart every rank (with --resume to continue from the last checkpoint)",
       o.rank, o.world_size, what, msg, o.timeout_seconds);
}

}  // namespace

Collective::Collective(const DistributedOptions& options) : options_(options) {
  options_.validate();
  if (!distributed()) return;
  const auto [host, port] = split_master(options_.master);
  impl_ = std::make_unique<Impl>();
  try {
    c10d::TCPStoreOptions so;
    so.port = uint16_t(port);
    so.isServer = is_root();
    so.numWorkers = size_t(options_.world_size);
    so.waitWorkers = true;
    so.timeout = millis(options_.timeout_seconds);
    impl_->store = c10::make_intrusive<c10d::TCPStore>(host, so);
    if (options_.device.is_cuda()) {
#ifdef USE_C10D_NCCL
      auto no = c10d::ProcessGroupNCCL::Options::create();
      no->timeout = millis(options_.timeout_seconds);
      impl_->nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl_->store, options_.rank, options_.world_size, no);
      backend_ = "nccl";
      return;
#else
      fail("rank {}: ranks on CUDA devices need NCCL, and this toga was built without it (scripts/build_cuda.sh)",
           options_.rank);
#endif
    }
    auto go = c10d::ProcessGroupGloo::Options::create(millis(options_.timeout_seconds));
    const bool loopback = host == "localhost" || host.rfind("127.", 0) == 0;
    if (!options_.interface.empty())
      go->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(options_.interface));
    else if (loopback)
      go->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    else
      go->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    go->threads = 1;  // one collective at a time; the compute threads belong to the model
    impl_->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, options_.rank, options_.world_size, go);
    backend_ = "gloo";
  } catch (const std::exception& e) {
    std::string msg = e.what();
    if (const auto* c = dynamic_cast<const c10::Error*>(&e)) msg = c->what_without_backtrace();
    fail("rank {} of {}: could not join the run at {} within {} s: {}", options_.rank, options_.world_size,
         options_.master, options_.timeout_seconds, msg);
  }
}

Collective::~Collective() = default;

// Runs `op` on a contiguous CPU copy of t (Gloo's side), copies the result back, and accounts for it.
template <typename Op>
void Collective::on_host(torch::Tensor& t, const std::string& what, Op op, double timeout_seconds) {
  const auto t0 = std::chrono::steady_clock::now();
  // Gloo works on host memory, NCCL on the rank's GPU.
  const torch::Device where = impl_->on_gpu() ? options_.device : torch::Device(torch::kCPU);
  torch::Tensor host = t.device() == where && t.is_contiguous() ? t : t.to(where).contiguous();
  std::vector<torch::Tensor> v{host};
  try {
    auto work = op(v);
    // Point-to-point work takes its timeout at the wait; collectives carry theirs in their options.
    if (timeout_seconds > 0)
      work->wait(millis(timeout_seconds));
    else
      work->wait();
  } catch (const std::exception& e) {
    lost_contact(options_, what, e);
  }
  if (!host.is_same(t)) t.copy_(host);
  seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  bytes_ += double(t.numel() * t.element_size());
}

void Collective::allreduce_sum(torch::Tensor& t, const std::string& what) {
  if (!distributed()) return;
  on_host(t, what, [&](auto& v) { return impl_->run([&](auto& g) { return g.allreduce(v); }); }, 0);
}

void Collective::broadcast(torch::Tensor& t, const std::string& what, int root, double timeout_seconds) {
  if (!distributed()) return;
  c10d::BroadcastOptions bo;
  bo.rootRank = root;
  if (timeout_seconds > 0) bo.timeout = millis(timeout_seconds);
  on_host(t, what, [&](auto& v) { return impl_->run([&](auto& g) { return g.broadcast(v, bo); }); }, 0);
}

void Collective::send(const torch::Tensor& t, int to, const std::string& what, double timeout_seconds) {
  check_peer(to, what);
  torch::Tensor copy = t;  // on_host may replace its argument by a host copy, never the caller's tensor
  on_host(copy, what, [&](auto& v) { return impl_->run([&](auto& g) { return g.send(v, to, 0); }); }, timeout_seconds);
}

void Collective::recv(torch::Tensor& t, int from, const std::string& what, double timeout_seconds) {
  check_peer(from, what);
  on_host(t, what, [&](auto& v) { return impl_->run([&](auto& g) { return g.recv(v, from, 0); }); }, timeout_seconds);
}

void Collective::barrier(const std::string& what, double timeout_seconds) {
  if (!distributed()) return;
  c10d::BarrierOptions bo;
  if (timeout_seconds > 0) bo.timeout = millis(timeout_seconds);
  try {
    impl_->run([&](auto& g) { return g.barrier(bo); })->wait();
  } catch (const std::exception& e) {
    lost_contact(options_, what, e);
  }
}

#else  // built without c10d Gloo: one process only

struct Collective::Impl {};

Collective::Collective(const DistributedOptions& options) : options_(options) {
  options_.validate();
  if (distributed())
    fail("this toga was built without libtorch's c10d Gloo backend (libgloo-dev): it runs one process, not {}",
         options_.world_size);
}
Collective::~Collective() = default;
void Collective::allreduce_sum(torch::Tensor&, const std::string&) {}
void Collective::broadcast(torch::Tensor&, const std::string&, int, double) {}
void Collective::barrier(const std::string&, double) {}
void Collective::send(const torch::Tensor&, int to, const std::string& what, double) { check_peer(to, what); }
void Collective::recv(torch::Tensor&, int from, const std::string& what, double) { check_peer(from, what); }

#endif

std::string fingerprint(const void* data, size_t bytes) {
  uint64_t h = 1469598103934665603ull;
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return fmt::format("{:016x}", h);
}

void Collective::require_same_as_root(const std::string& mine, const std::string& job) {
  if (!distributed()) return;
  const std::string what = "the ranks' check of the " + job + " options";
  const std::string root = broadcast_bytes(mine, what);
  torch::Tensor differ = torch::tensor({mine == root ? 0.0 : 1.0}, torch::kFloat64);
  allreduce_sum(differ, what);
  if (mine != root)
    fail("rank {}'s {} differs from rank 0's (options, model or data): every rank must be started with the same options "
         "and files. Rank 0: {}; rank {}: {}", rank(), job, root, rank(), mine);
  if (differ.item<double>() > 0)
    fail("{} rank(s) were started with other {} options, model or data than rank 0 (their errors say which)",
         int(differ.item<double>()), job);
}

void Collective::check_peer(int peer, const std::string& what) const {
  if (peer < 0 || peer >= world_size() || peer == rank())
    fail("rank {} of {}: {} names rank {}, which is not another process of the run", rank(), world_size(), what, peer);
}

void Collective::send_bytes(const std::string& bytes, int to, const std::string& what, double timeout_seconds) {
  send(torch::tensor({int64_t(bytes.size())}, torch::kInt64), to, what, timeout_seconds);
  auto data = torch::empty({int64_t(bytes.size())}, torch::kUInt8);
  if (!bytes.empty()) std::memcpy(data.data_ptr(), bytes.data(), bytes.size());
  send(data, to, what, timeout_seconds);
}

std::string Collective::recv_bytes(int from, const std::string& what, double timeout_seconds) {
  torch::Tensor size = torch::empty({1}, torch::kInt64);
  recv(size, from, what, timeout_seconds);
  torch::Tensor data = torch::empty({size.item<int64_t>()}, torch::kUInt8);
  recv(data, from, what, timeout_seconds);
  return std::string(static_cast<const char*>(data.data_ptr()), size_t(data.numel()));
}

std::string Collective::broadcast_bytes(const std::string& bytes, const std::string& what, double timeout_seconds) {
  if (!distributed()) return bytes;
  torch::Tensor size = torch::tensor({int64_t(is_root() ? bytes.size() : 0)}, torch::kInt64);
  broadcast(size, what, 0, timeout_seconds);
  torch::Tensor data = torch::empty({size.item<int64_t>()}, torch::kUInt8);
  if (is_root()) std::memcpy(data.data_ptr(), bytes.data(), bytes.size());
  broadcast(data, what, 0, timeout_seconds);
  return std::string(static_cast<const char*>(data.data_ptr()), size_t(data.numel()));
}

}  // namespace toga
