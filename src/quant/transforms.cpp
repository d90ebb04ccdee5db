#include "quant/transforms.h"

#include <random>

#include "quant/hadamard.h"
#include "util/error.h"

namespace toga {

bool is_known_transform(const std::string& kind) { return kind == "hadamard" || kind == "rotation"; }

torch::Tensor orthogonal_transform(const std::string& kind, int64_t n, uint64_t seed) {
  return orthogonal_transform_f64(kind, n, seed).to(torch::kFloat32);
}

torch::Tensor orthogonal_transform_f64(const std::string& kind, int64_t n, uint64_t seed) {
  if (n <= 0) fail("orthogonal transform of size {}", n);
  std::mt19937_64 rng(seed);
  if (kind == "hadamard") {
    auto h = hadamard_matrix(n) / std::sqrt(double(n));
    if (seed != 0) {
      std::vector<double> signs(n);
      for (auto& s : signs) s = (rng() & 1) ? 1.0 : -1.0;
      h = h * torch::tensor(signs, torch::kFloat64).unsqueeze(0);
    }
    return h;
  }
  if (kind == "rotation") {
    // The Gaussian draws come from the seeded generator, not torch's, so every platform gets them.
    std::normal_distribution<double> normal(0.0, 1.0);
    std::vector<double> g(static_cast<size_t>(n * n));
    for (auto& v : g) v = normal(rng);
    return orthonormalized(torch::tensor(g, torch::kFloat64).reshape({n, n}));
  }
  fail("unknown transform '{}' (known: hadamard, rotation)", kind);
}

torch::Tensor orthonormalized(const torch::Tensor& x) {
  auto [q, r] = torch::linalg_qr(x.to(torch::kFloat64));
  return q * torch::sign(torch::diagonal(r)).unsqueeze(0);
}

torch::Tensor partitioned_transform(const std::string& kind, int64_t in, int64_t k_salient, uint64_t seed) {
  return partitioned_transform_f64(kind, in, k_salient, seed).to(torch::kFloat32);
}

torch::Tensor partitioned_transform_f64(const std::string& kind, int64_t in, int64_t k_salient, uint64_t seed) {
  auto r = torch::zeros({in, in}, torch::kFloat64);
  const int64_t low = in - k_salient;
  if (low > 0) r.narrow(0, 0, low).narrow(1, 0, low).copy_(orthogonal_transform_f64(kind, low, seed));
  if (k_salient > 0) r.narrow(0, low, k_salient).narrow(1, low, k_salient).copy_(orthogonal_transform_f64(kind, k_salient, seed + 1));
  return r;
}

}  // namespace toga
