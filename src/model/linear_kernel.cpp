#include "model/linear_kernel.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>

#include "util/error.h"

namespace toga {

torch::Tensor DenseLinearKernel::apply(const LinearSite& site, const torch::Tensor& x) const {
  const torch::Tensor w = site.custom_weight ? site.custom_weight(site.weight) : site.weight;
  if (x.numel() == x.size(-1) && x.scalar_type() == torch::kFloat32 && !w.requires_grad() && !x.requires_grad()) {
    // One token (decoding): libtorch 1.13 sends a one-row fp32 linear to a GEMM that streams the
    // weight ~4x slower than GEMV does (bench_forward's gemv cases). bf16 is the other way round.
    auto out_shape = x.sizes().vec();
    out_shape.back() = w.size(0);
    auto y = torch::mv(w, x.reshape({-1})).reshape(out_shape);
    if (site.bias.defined()) y = y + site.bias;
    return y;
  }
  return torch::linear(x, w, site.bias);
}

namespace {

std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}

std::map<std::string, std::vector<LinearKernelEntry>>& registry() {
  static std::map<std::string, std::vector<LinearKernelEntry>> r = [] {
    std::map<std::string, std::vector<LinearKernelEntry>> init;
    init["dense"].push_back({"dense", "dense", 0, nullptr, [] { return std::make_shared<DenseLinearKernel>(); }});
    return init;
  }();
  return r;
}

}  // namespace

void register_linear_kernel(LinearKernelEntry entry) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  auto& list = registry()[entry.format];
  list.push_back(std::move(entry));
  std::stable_sort(list.begin(), list.end(), [](const auto& a, const auto& b) { return a.priority > b.priority; });
}

std::vector<LinearKernelEntry> linear_kernels(const std::string& format) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  auto it = registry().find(format);
  return it == registry().end() ? std::vector<LinearKernelEntry>{} : it->second;
}

std::shared_ptr<const LinearKernel> choose_linear_kernel(const std::string& format) {
  const auto list = linear_kernels(format);
  if (list.empty()) fail("no kernel implements the weight storage format '{}'", format);
  const char* pinned = std::getenv("TOGA_KERNEL");
  if (pinned && *pinned) {
    for (const auto& e : list)
      if (e.name == pinned) {
        if (e.available && !e.available()) fail("TOGA_KERNEL={}: this CPU lacks what the kernel needs", pinned);
        return e.make();
      }
    // A pin names a kernel of another format (e.g. a packed one): dense formats keep their kernel.
  }
  for (const auto& e : list)
    if (!e.available || e.available()) return e.make();
  fail("no kernel for format '{}' runs on this CPU", format);
}

}  // namespace toga
