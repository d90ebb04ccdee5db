#include "util/progress.h"

#include <unistd.h>

#include <cstdio>

#include <fmt/format.h>

namespace toga {

Progress::Progress(std::string label, int64_t total, bool enabled)
    : label_(std::move(label)), total_(total), enabled_(enabled) {
  start_ = last_print_ = std::chrono::steady_clock::now();
}

double Progress::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

std::string format_duration(double s) {
  if (s < 0 || s != s) return "?";
  const auto t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02}m", t / 3600, (t % 3600) / 60);
  if (t >= 60) return fmt::format("{}m{:02}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

void Progress::update(int64_t done, const std::string& detail, int64_t units_for_rate) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  // Throttle to one line every 2 s, but always show the first and last step.
  if (printed_ && done < total_ && std::chrono::duration<double>(now - last_print_).count() < 2.0) return;
  last_print_ = now;
  printed_ = true;
  const double el = elapsed_seconds();
  const double frac = total_ > 0 ? double(done) / double(total_) : 0.0;
  const double eta = frac > 0 ? el * (1.0 - frac) / frac : -1.0;
  std::string rate;
  if (units_for_rate >= 0 && el > 0) rate = fmt::format(" | {:.0f}/s", double(units_for_rate) / el);
  std::fprintf(stderr, "[%s] %lld/%lld (%.1f%%)%s%s | %s elapsed, ETA %s\n", label_.c_str(),
               static_cast<long long>(done), static_cast<long long>(total_), 100.0 * frac,
               detail.empty() ? "" : (" | " + detail).c_str(), rate.c_str(), format_duration(el).c_str(),
               format_duration(eta).c_str());
  std::fflush(stderr);
}

void Progress::finish(const std::string& detail) {
  if (!enabled_) return;
  std::fprintf(stderr, "[%s] done in %s%s\n", label_.c_str(), format_duration(elapsed_seconds()).c_str(),
               detail.empty() ? "" : (" | " + detail).c_str());
}

}  // namespace toga
