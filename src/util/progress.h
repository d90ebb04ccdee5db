// Progress lines for long work: step, done/total, a metric, rate and ETA, on stderr, throttled.
#pragma once

#include <chrono>
#include <string>

namespace toga {

class Progress {
 public:
  Progress(std::string label, int64_t total, bool enabled = true);
  // Reports that `done` of `total` units are finished; `detail` is appended (e.g. "ppl 10.31").
  void update(int64_t done, const std::string& detail = "", int64_t units_for_rate = -1);
  void finish(const std::string& detail = "");
  double elapsed_seconds() const;

 private:
  std::string label_;
  int64_t total_;
  bool enabled_;
  std::chrono::steady_clock::time_point start_, last_print_;
  bool printed_ = false;
};

std::string format_duration(double seconds);

}  // namespace toga
