#include "quant/hadamard.h"

#include <cmath>
#include <map>
#include <mutex>

#include "util/error.h"

namespace toga {

namespace {

bool is_prime(int64_t q) {
  if (q < 2) return false;
  for (int64_t d = 2; d * d <= q; ++d)
    if (q % d == 0) return false;
  return true;
}

// 0 if no construction; 1 Paley I (m = q + 1), 2 Paley II (m = 2(q + 1)); m = 1, 2: trivial.
int paley_kind(int64_t m) {
  if (m == 1 || m == 2) return 3;
  if (m % 4 != 0) return 0;
  if (is_prime(m - 1) && (m - 1) % 4 == 3) return 1;
  if (m % 2 == 0 && is_prime(m / 2 - 1) && (m / 2 - 1) % 4 == 1) return 2;
  return 0;
}

// Jacobsthal matrix of a prime q: Q[i][j] = χ(j − i), χ the quadratic character (χ(0) = 0).
std::vector<std::vector<int>> jacobsthal(int64_t q) {
  std::vector<int> chi(size_t(q), -1);
  chi[0] = 0;
  for (int64_t x = 1; x < q; ++x) chi[size_t(x * x % q)] = 1;
  std::vector<std::vector<int>> Q(static_cast<size_t>(q), std::vector<int>(static_cast<size_t>(q)));
  for (int64_t i = 0; i < q; ++i)
    for (int64_t j = 0; j < q; ++j) Q[size_t(i)][size_t(j)] = chi[size_t(((j - i) % q + q) % q)];
  return Q;
}

torch::Tensor paley_matrix(int64_t m) {
  const int kind = paley_kind(m);
  if (m == 1) return torch::ones({1, 1}, torch::kFloat64);
  if (m == 2) return torch::tensor({1.0, 1.0, 1.0, -1.0}, torch::kFloat64).reshape({2, 2});
  if (kind == 1) {
    // H = I + S, S = [[0, 1ᵀ], [−1, Q]] skew-symmetric for q ≡ 3 (mod 4).
    const int64_t q = m - 1;
    const auto Q = jacobsthal(q);
    auto h = torch::zeros({m, m}, torch::kFloat64);
    auto a = h.accessor<double, 2>();
    for (int64_t j = 1; j < m; ++j) {
      a[0][j] = 1;
      a[j][0] = -1;
    }
    for (int64_t i = 0; i < q; ++i)
      for (int64_t j = 0; j < q; ++j) a[i + 1][j + 1] = Q[size_t(i)][size_t(j)];
    for (int64_t i = 0; i < m; ++i) a[i][i] += 1;
    return h;
  }
  if (kind == 2) {
    // C = [[0, 1ᵀ], [1, Q]] symmetric for q ≡ 1 (mod 4); each entry becomes a 2×2 block:
    // 0 → [[1, −1], [−1, −1]], ±1 → ±[[1, 1], [1, −1]].
    const int64_t q = m / 2 - 1, c = q + 1;
    const auto Q = jacobsthal(q);
    auto entry = [&](int64_t i, int64_t j) -> int {
      if (i == 0 && j == 0) return 0;
      if (i == 0 || j == 0) return 1;
      return Q[size_t(i - 1)][size_t(j - 1)];
    };
    auto h = torch::zeros({m, m}, torch::kFloat64);
    auto a = h.accessor<double, 2>();
    for (int64_t i = 0; i < c; ++i)
      for (int64_t j = 0; j < c; ++j) {
        const int e = entry(i, j);
        const double b[2][2] = {{e == 0 ? 1.0 : e, e == 0 ? -1.0 : e}, {e == 0 ? -1.0 : e, e == 0 ? -1.0 : -e}};
        for (int r = 0; r < 2; ++r)
          for (int s = 0; s < 2; ++s) a[2 * i + r][2 * j + s] = b[r][s];
      }
    return h;
  }
  fail("no Paley construction of order {}", m);
}

}  // namespace

HadamardFactors hadamard_factors(int64_t n) {
  if (n <= 0) fail("a Hadamard transform of size {}", n);
  int64_t pow2 = 1;
  while (n % (pow2 * 2) == 0) pow2 *= 2;
  for (; pow2 >= 1; pow2 /= 2)
    if (paley_kind(n / pow2)) return {n / pow2, pow2};
  int64_t odd = n, twos = 1;
  while (odd % 2 == 0) odd /= 2, twos *= 2;
  fail("no Hadamard matrix of width {} (= {} · {}): toga builds orders m · 2^k with m = q + 1 (q a prime ≡ 3 mod 4) "
       "or 2(q + 1) (q a prime ≡ 1 mod 4), and none divides this width; use a random rotation (\"rotation\") instead",
       n, odd, twos);
}

bool has_hadamard(int64_t n) {
  try {
    hadamard_factors(n);
    return true;
  } catch (const Error&) {
    return false;
  }
}

torch::Tensor hadamard_matrix(int64_t n) {
  const HadamardFactors f = hadamard_factors(n);
  auto s = torch::ones({1, 1}, torch::kFloat64);
  while (s.size(0) < f.pow2) s = torch::cat({torch::cat({s, s}, 1), torch::cat({s, -s}, 1)}, 0);
  return torch::kron(paley_matrix(f.m), s);
}

torch::Tensor fast_hadamard(const torch::Tensor& x) {
  const int64_t n = x.size(-1);
  const HadamardFactors f = hadamard_factors(n);
  const auto dtype = x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  auto sizes = x.sizes().vec();
  // [rows, m, 2^k]: index i·2^k + j, so x·(A ⊗ B) = Aᵀ·X·B per row.
  torch::Tensor y = x.to(dtype).reshape({-1, f.m, f.pow2});
  for (int64_t h = 1; h < f.pow2; h *= 2) {
    const auto v = y.reshape({y.size(0), f.m, f.pow2 / (2 * h), 2, h});
    const auto a = v.select(3, 0), b = v.select(3, 1);
    y = torch::stack({a + b, a - b}, 3).reshape({y.size(0), f.m, f.pow2});
  }
  if (f.m > 1) {
    static std::mutex mu;
    static std::map<int64_t, torch::Tensor> cache;
    torch::Tensor hm;
    {
      std::lock_guard<std::mutex> lock(mu);
      auto& c = cache[f.m];
      if (!c.defined()) c = paley_matrix(f.m);
      hm = c;
    }
    y = torch::matmul(hm.t().to(y.device(), dtype), y);
  }
  return (y / std::sqrt(double(n))).reshape(sizes).to(x.scalar_type());
}

}  // namespace toga
