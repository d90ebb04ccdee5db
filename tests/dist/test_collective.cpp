// The process group behind the data-parallel search, with ranks as threads of this process (Gloo
// does not care): sums and broadcasts against values computed here, and the two ways a peer fails —
// it leaves (its sockets close: the others fail at once, naming the operation) or it falls silent
// (the others fail after the timeout) — both ending in toga::Error, never a hang.
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <future>
#include <thread>

#include "dist/collective.h"
#include "util/error.h"

using namespace toga;
using torch::Tensor;

namespace {

DistributedOptions rank_options(int world, int rank, int port, double timeout = 30) {
  DistributedOptions o;
  o.world_size = world;
  o.rank = rank;
  o.master = "127.0.0.1:" + std::to_string(port);
  o.timeout_seconds = timeout;
  return o;
}

// Runs body(rank, collective) on `world` threads; returns what each threw ("" for none).
std::vector<std::string> run_ranks(int world, const std::function<void(int, Collective&)>& body, double timeout = 30) {
  const int port = free_loopback_port();
  std::vector<std::future<std::string>> done;
  for (int r = 0; r < world; ++r)
    done.push_back(std::async(std::launch::async, [=] {
      try {
        Collective c(rank_options(world, r, port, timeout));
        body(r, c);
      } catch (const std::exception& e) {
        return std::string(e.what()).empty() ? std::string("?") : std::string(e.what());
      }
      return std::string();
    }));
  std::vector<std::string> errors;
  for (auto& d : done) errors.push_back(d.get());
  return errors;
}

Tensor rank_values(int rank, int64_t n) {
  torch::manual_seed(100 + rank);
  return torch::randn({n}, torch::kFloat64);
}

}  // namespace

TEST(Collective, OneProcessIsANoOp) {
  Collective c;
  EXPECT_FALSE(c.distributed());
  EXPECT_TRUE(c.is_root());
  Tensor t = torch::arange(5, torch::kFloat64);
  const Tensor before = t.clone();
  c.allreduce_sum(t, "a test");
  c.broadcast(t, "a test");
  EXPECT_TRUE(torch::equal(t, before));
  EXPECT_EQ(c.broadcast_bytes("abc", "a test"), "abc");
}

TEST(Collective, RejectsImpossibleOptions) {
  EXPECT_THROW(Collective(rank_options(2, 2, 29500)), Error);
  EXPECT_THROW(Collective(rank_options(0, 0, 29500)), Error);
  DistributedOptions o = rank_options(2, 0, 29500);
  o.master = "no-port";
  EXPECT_THROW(o.validate(), Error);
}

TEST(Collective, AllReduceSumsAndBroadcastCopiesOnEveryRank) {
  const int world = 3;
  const int64_t n = 100003;  // not a multiple of any chunking
  std::vector<Tensor> summed(world), broadcast(world);
  std::vector<std::string> bytes(world);
  std::string big(3 << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = char(i * 2654435761u >> 13);
  std::vector<Tensor> inputs;  // made here: the global generator is not for concurrent threads
  for (int r = 0; r < world; ++r) inputs.push_back(rank_values(r, n));
  const auto errors = run_ranks(world, [&](int r, Collective& c) {
    EXPECT_EQ(c.rank(), r);
    EXPECT_EQ(c.world_size(), world);
    Tensor t = inputs[size_t(r)].clone();
    c.allreduce_sum(t, "a test's all-reduce");
    summed[size_t(r)] = t;
    Tensor b = r == 0 ? torch::arange(n, torch::kLong) * 7 : torch::zeros({n}, torch::kLong);
    c.broadcast(b, "a test's broadcast");
    broadcast[size_t(r)] = b;
    bytes[size_t(r)] = c.broadcast_bytes(r == 0 ? big : std::string(), "a test's byte broadcast");
    EXPECT_GT(c.bytes(), 0);
  });
  for (const auto& e : errors) ASSERT_EQ(e, "");
  const Tensor expected = inputs[0] + inputs[1] + inputs[2];
  for (int r = 0; r < world; ++r) {
    EXPECT_LT((summed[size_t(r)] - expected).abs().max().item<double>(), 1e-12) << "rank " << r;
    EXPECT_TRUE(torch::equal(summed[size_t(r)], summed[0])) << "every rank receives the same bits";
    EXPECT_TRUE(torch::equal(broadcast[size_t(r)], torch::arange(n, torch::kLong) * 7));
    EXPECT_EQ(bytes[size_t(r)], big);
  }
}

// A rank that leaves (as a process that dies does: its sockets close) makes the others' next
// collective fail at once with an error naming it; no rank hangs.
TEST(Collective, APeerThatLeavesFailsTheOthersWithAClearError) {
  const auto t0 = std::chrono::steady_clock::now();
  const auto errors = run_ranks(2, [](int r, Collective& c) {
    Tensor t = torch::ones({4}, torch::kFloat32);
    c.allreduce_sum(t, "step 1's gradient all-reduce");
    if (r == 1) return;  // leaves: its Collective is destroyed
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    c.allreduce_sum(t, "step 2's gradient all-reduce");
  }, 60);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(errors[1], "");
  EXPECT_NE(errors[0].find("lost contact"), std::string::npos) << errors[0];
  EXPECT_NE(errors[0].find("step 2's gradient all-reduce"), std::string::npos) << errors[0];
  EXPECT_NE(errors[0].find("--resume"), std::string::npos) << errors[0];
  EXPECT_LT(secs, 30) << "found without waiting for the 60 s timeout";
}

// A rank that stays connected but never joins the collective: the others fail after the timeout.
TEST(Collective, ASilentPeerFailsTheOthersAfterTheTimeout) {
  const auto t0 = std::chrono::steady_clock::now();
  std::promise<void> release;
  auto released = release.get_future().share();
  const auto errors = run_ranks(2, [&](int r, Collective& c) {
    Tensor t = torch::ones({4}, torch::kFloat32);
    if (r == 1) {
      released.wait();  // silent until rank 0 has given up
      return;
    }
    try {
      c.allreduce_sum(t, "step 7's gradient all-reduce");
    } catch (...) {
      release.set_value();
      throw;
    }
    release.set_value();
  }, 2);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(errors[0].find("step 7's gradient all-reduce"), std::string::npos) << errors[0];
  EXPECT_GE(secs, 1.5);
  EXPECT_LT(secs, 30);
}
