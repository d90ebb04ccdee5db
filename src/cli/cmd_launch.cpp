// toga launch -n N VERB ARGS...: N processes of one distributed job on this machine, like torchrun.
// Each child is this toga with TOGA_WORLD_SIZE / TOGA_RANK / TOGA_MASTER set (a free loopback port
// unless --master-port), OMP_NUM_THREADS = its share of the cores and, by default, pinned to that
// share. When one child fails, the others are stopped (after a grace period in which they report
// the failure themselves) and the first failure's status is returned: a run never leaves orphans
// behind or hangs on a dead peer.
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "cli/commands.h"
#include "dist/collective.h"
#include "model/threads.h"
#include "util/error.h"

namespace toga::cli {

namespace {

std::string describe(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "was killed by signal " + std::to_string(WTERMSIG(status));
  return "stopped";
}

volatile sig_atomic_t g_stop_signal = 0;
void on_stop_signal(int sig) { g_stop_signal = sig; }

struct LaunchFlags {
  int processes = 2;
  int master_port = 0;
  double timeout = 0;
  bool pin = true;
  std::vector<std::string> command;
};

int launch(const LaunchFlags& f) {
  if (f.processes < 1) fail("launch needs at least one process, got {}", f.processes);
  if (f.command.empty()) fail("launch needs a command: toga launch -n N search MODEL OUT ...");
  // Only these verbs share their work between processes; any other would just run N times. The
  // search's ranks compute at once (each gets its share of the cores); a layer-sharded quantization's
  // take turns block range by block range (each may use every core).
  const std::string& verb = f.command.front();
  if (verb != "search" && verb != "quantize")
    fail("launch runs `toga search` (data-parallel) or `toga quantize` (layer-sharded) on several processes; '{}' does "
         "not share its work between processes", verb);
  const bool take_turns = verb == "quantize";
  const int port = f.master_port > 0 ? f.master_port : free_loopback_port();
  const std::string master = "127.0.0.1:" + std::to_string(port);
  // Each rank gets a contiguous share of the CPUs this process may use.
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  sched_getaffinity(0, sizeof(allowed), &allowed);
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &allowed)) cpus.push_back(c);
  const int share = take_turns ? int(cpus.size()) : std::max<int>(1, int(cpus.size()) / f.processes);
  const bool pin = f.pin && !take_turns && int(cpus.size()) >= f.processes;
  std::fprintf(stderr, "launch: %d processes meeting at %s, %d thread(s) each%s\n", f.processes, master.c_str(), share,
               pin ? ", pinned" : "");
  std::fflush(stderr);

  signal(SIGINT, on_stop_signal);
  signal(SIGTERM, on_stop_signal);
  std::vector<pid_t> pids;
  for (int r = 0; r < f.processes; ++r) {
    const pid_t pid = fork();
    if (pid < 0) fail("cannot start process {} of {}", r, f.processes);
    if (pid == 0) {
      signal(SIGINT, SIG_DFL);
      signal(SIGTERM, SIG_DFL);
      setenv("TOGA_WORLD_SIZE", std::to_string(f.processes).c_str(), 1);
      setenv("TOGA_RANK", std::to_string(r).c_str(), 1);
      setenv("TOGA_MASTER", master.c_str(), 1);
      if (f.timeout > 0) setenv("TOGA_DIST_TIMEOUT", std::to_string(f.timeout).c_str(), 1);
      setenv("OMP_NUM_THREADS", std::to_string(share).c_str(), 0);
      if (pin) {
        cpu_set_t mine;
        CPU_ZERO(&mine);
        for (int i = 0; i < share; ++i) CPU_SET(cpus[size_t(r * share + i) % cpus.size()], &mine);
        sched_setaffinity(0, sizeof(mine), &mine);
      }
      std::vector<std::string> args{"toga"};
      args.insert(args.end(), f.command.begin(), f.command.end());
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv("/proc/self/exe", argv.data());
      std::fprintf(stderr, "error: launch: cannot start rank %d\n", r);
      _exit(127);
    }
    pids.push_back(pid);
  }

  // Wait for all. After a failure the others get a grace period to stop by themselves (they notice a
  // dead peer at their next collective and say so), then SIGTERM, then SIGKILL; a signal to the
  // launcher sends SIGTERM at once.
  using Clock = std::chrono::steady_clock;
  constexpr auto kGrace = std::chrono::seconds(30), kKillAfter = std::chrono::seconds(10);
  int result = 0, running = f.processes;
  bool failed = false, terminated = false;
  Clock::time_point failed_at{}, terminated_at{};
  auto signal_all = [&](int sig) {
    for (pid_t p : pids)
      if (p > 0) kill(p, sig);
  };
  while (running > 0) {
    int status = 0;
    const pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      size_t r = 0;
      while (r < pids.size() && pids[r] != pid) ++r;
      if (r == pids.size()) continue;
      pids[r] = -1;
      --running;
      const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      if (!ok && !failed) {
        std::fprintf(stderr, "launch: rank %zu %s; waiting up to %d s for the other ranks to stop\n", r,
                     describe(status).c_str(), int(kGrace.count()));
        result = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        failed = true;
        failed_at = Clock::now();
      }
      continue;
    }
    const auto now = Clock::now();
    if (g_stop_signal && !terminated) {
      std::fprintf(stderr, "launch: signal %d; stopping every rank\n", int(g_stop_signal));
      if (!failed) result = 128 + g_stop_signal;
      signal_all(SIGTERM);
      terminated = true;
      terminated_at = now;
    } else if (failed && !terminated && now - failed_at > kGrace) {
      signal_all(SIGTERM);
      terminated = true;
      terminated_at = now;
    } else if (terminated && now - terminated_at > kKillAfter) {
      signal_all(SIGKILL);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return result;
}

}  // namespace

void register_launch(CLI::App& app) {
  auto* cmd = app.add_subcommand("launch", "run a command as N cooperating processes on this machine (a search shared by ranks, a quantization split by layers)");
  auto f = std::make_shared<LaunchFlags>();
  cmd->add_option("-n,--processes", f->processes, "number of processes (ranks)")->capture_default_str();
  cmd->add_option("--master-port", f->master_port, "rank 0's port on loopback (default: a free one)");
  cmd->add_option("--dist-timeout", f->timeout, "seconds a rank waits for a silent peer before failing (default: the verb's)");
  cmd->add_flag("!--no-pin", f->pin, "do not pin each rank to its share of the CPUs");
  // Everything from the first positional argument on is the command every rank runs.
  cmd->prefix_command();
  cmd->footer("COMMAND: the toga command each rank runs, e.g. toga launch -n 2 search MODEL OUT --budget 0.125 ...");
  cmd->callback([f, cmd] {
    f->command = cmd->remaining();
    const int code = launch(*f);
    if (code != 0) throw CLI::RuntimeError(code);
  });
}

}  // namespace toga::cli
