// Peak resident memory of load_model against the bytes of the weights it loads (target: <= 1.3x).
//
//   bench_load_memory [--dir DIR] [--json FILE]   write DIR and DIR-untied if absent, measure every case
//   bench_load_memory write DIR [untied]           a random Llama-3.2-1B as bf16 safetensors (~2.5 GB;
//                                                  untied: with its own lm_head, as larger Llamas and
//                                                  Qwen3-8B have, loaded last, ~3 GB)
//   bench_load_memory measure CHECKPOINT DTYPE     one load in this process; prints one JSON object
//
// Each case runs in a fresh child process, so the peak belongs to that load alone: the child opens
// the checkpoint, notes its RSS, resets the kernel's high-water mark (/proc/self/clear_refs), loads,
// and reports VmHWM minus that RSS. File pages mapped by the loader count, as they do for the OS.
#include <fmt/format.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "bench_models.h"
#include "io/checkpoint.h"
#include "model/model.h"
#include "model/threads.h"
#include "util/half.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// A field of /proc/self/status in bytes (the kernel reports kB).
double status_bytes(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string key = std::string(field) + ":";
  while (std::getline(in, line))
    if (line.compare(0, key.size(), key) == 0) return std::stod(line.substr(key.size())) * 1024.0;
  return -1;
}

bool reset_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

// The checkpoint is written from one random pool the size of the largest tensor, each tensor a
// window at its own offset into it: every tensor differs, and the writer holds a fifth of the
// checkpoint instead of all of it (and never an fp32 copy).
int write_random_checkpoint(const std::string& dir, bool untied) {
  toga::ModelConfig c = toga::bench::llama32_1b_config();
  c.tie_word_embeddings = !untied;
  const auto expected = toga::expected_tensors(c);
  int64_t largest = 0;
  for (const auto& [name, shape] : expected) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    largest = std::max(largest, n);
  }
  const int64_t pool_n = largest + (int64_t(1) << 22);
  std::vector<uint16_t> pool(static_cast<size_t>(pool_n));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < pool_n; ++i)
    pool[i] = toga::float_to_bf16(0.02f * toga::bench::unit_uniform(12345, static_cast<uint64_t>(i)));
  std::vector<uint16_t> gains(static_cast<size_t>(c.hidden_size));
  for (size_t i = 0; i < gains.size(); ++i)
    gains[i] = toga::float_to_bf16(1.0f + 0.05f * toga::bench::unit_uniform(777, i));

  std::vector<toga::TensorToWrite> tensors;
  uint64_t index = 0;
  for (const auto& [name, shape] : expected) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    const uint16_t* data;
    if (shape.size() == 1) {
      data = gains.data();
    } else {
      const uint64_t offset = toga::bench::mix64(++index) % static_cast<uint64_t>(pool_n - n + 1);
      data = pool.data() + offset;
    }
    tensors.push_back({name, toga::DType::BF16, shape, data});
  }
  const auto t0 = Clock::now();
  toga::write_hf_checkpoint(dir, c, tensors);
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  uint64_t bytes = 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file()) bytes += e.file_size();
  nlohmann::json j = {{"case", "write"}, {"dir", dir}, {"file_bytes", bytes}, {"write_seconds", seconds},
                      {"peak_rss_bytes", status_bytes("VmHWM")},
                      {"peak_over_file", status_bytes("VmHWM") / double(bytes)}};
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

// Bytes of the model's tensors, each storage once (a tied lm_head shares the embedding's).
double model_bytes(const toga::Model& m) {
  std::set<const void*> seen;
  double total = 0;
  auto add = [&](const torch::Tensor& t) {
    if (!t.defined()) return;
    if (!seen.insert(t.storage().data()).second) return;
    total += static_cast<double>(t.storage().nbytes());
  };
  add(m.embed);
  add(m.final_norm);
  add(m.lm_head.weight);
  add(m.lm_head.bias);
  for (const auto& b : m.blocks) {
    for (const auto* t : {&b.attn_norm, &b.mlp_norm, &b.q_norm, &b.k_norm}) add(*t);
    for (const auto* s : {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down}) {
      add(s->weight);
      add(s->bias);
    }
  }
  return total;
}

int measure(const std::string& path, const std::string& dtype_name) {
  toga::bench::use_cli_allocator_settings();
  toga::set_threads(0);
  (void)torch::ones({8}).sum().item<float>();  // libtorch's lazy initialisation is not the loader's
  const toga::Checkpoint ck = toga::open_checkpoint(path);
  toga::LoadOptions opts;
  opts.dtype = toga::parse_dtype(dtype_name);
  const double before = status_bytes("VmRSS");
  const bool reset = reset_peak_rss();
  const double load1 = toga::bench::load_average();
  const auto t0 = Clock::now();
  toga::Model m = toga::load_model(ck, opts);
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  const double peak = status_bytes("VmHWM"), after = status_bytes("VmRSS");
  const double weights = model_bytes(m);
  nlohmann::json j = {{"case", "load"},
                      {"checkpoint", path},
                      {"format", ck.format},
                      {"dtype", toga::dtype_string(opts.dtype)},
                      {"threads", at::get_num_threads()},
                      {"weights_bytes", weights},
                      {"rss_before_bytes", before},
                      {"peak_rss_bytes", peak},
                      {"peak_reset", reset},
                      {"peak_minus_before_bytes", peak - before},
                      {"after_minus_before_bytes", after - before},
                      {"rss_file_after_bytes", status_bytes("RssFile")},
                      {"ratio", (peak - before) / weights},
                      {"load_seconds", seconds},
                      {"load1", load1}};
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

std::string self_exe() {
  std::error_code ec;
  return fs::read_symlink("/proc/self/exe", ec).string();
}

// Runs this program with `args` in a child process and parses the JSON line it prints.
nlohmann::json run_child(const std::string& args) {
  const std::string cmd = fmt::format("'{}' {}", self_exe(), args);
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) throw std::runtime_error("cannot run " + cmd);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int rc = ::pclose(p);
  if (rc != 0) throw std::runtime_error(fmt::format("'{}' failed (status {}): {}", cmd, rc, out));
  return nlohmann::json::parse(out.substr(out.find('{')));
}

int run_all(const std::string& dir, const std::string& json_path) {
  nlohmann::json results = nlohmann::json::array();
  const std::string untied = dir + "-untied";
  for (const auto& [d, flag] : {std::pair{dir, ""}, std::pair{untied, " untied"}}) {
    if (fs::exists(fs::path(d) / "config.json")) continue;
    if (fs::path(d).has_parent_path()) fs::create_directories(fs::path(d).parent_path());
    results.push_back(run_child(fmt::format("write '{}'{}", d, flag)));
    std::fprintf(stderr, "%s\n", results.back().dump().c_str());
  }
  const std::string smol = toga::bench::smollm2_path();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {dir, "fp32"}, {dir, "bf16"}, {untied, "fp32"}, {untied, "bf16"}, {smol, "fp32"}, {smol, "bf16"}};
  for (const auto& [path, dtype] : cases) {
    if (!fs::exists(path)) {
      std::fprintf(stderr, "skipping %s: not found\n", path.c_str());
      continue;
    }
    results.push_back(run_child(fmt::format("measure '{}' {}", path, dtype)));
    std::fprintf(stderr, "%s\n", results.back().dump().c_str());
  }
  std::printf("| checkpoint | format | load dtype | weights (MiB) | peak RSS - RSS before (MiB) | ratio | "
              "load s | load1 |\n|---|---|---|---:|---:|---:|---:|---:|\n");
  for (const auto& r : results) {
    if (r["case"] != "load") continue;
    std::printf("| %s | %s | %s | %.0f | %.0f | %.3f | %.1f | %.2f |\n",
                fs::path(r["checkpoint"].get<std::string>()).filename().c_str(),
                r["format"].get<std::string>().c_str(), r["dtype"].get<std::string>().c_str(),
                r["weights_bytes"].get<double>() / 1048576.0, r["peak_minus_before_bytes"].get<double>() / 1048576.0,
                r["ratio"].get<double>(), r["load_seconds"].get<double>(), r["load1"].get<double>());
  }
  if (!json_path.empty()) std::ofstream(json_path) << results.dump(2) << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::vector<std::string> a(argv + 1, argv + argc);
    if ((a.size() == 2 || (a.size() == 3 && a[2] == "untied")) && a[0] == "write")
      return write_random_checkpoint(a[1], a.size() == 3);
    if (a.size() == 3 && a[0] == "measure") return measure(a[1], a[2]);
    std::string dir = "out/bench-llama32-1b", json;
    for (size_t i = 0; i < a.size(); ++i) {
      if (a[i] == "--dir" && i + 1 < a.size()) dir = a[++i];
      else if (a[i] == "--json" && i + 1 < a.size()) json = a[++i];
      else {
        std::fprintf(stderr, "usage: %s [--dir DIR] [--json FILE] | write DIR | measure CHECKPOINT DTYPE\n", argv[0]);
        return 2;
      }
    }
    return run_all(dir, json);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
