// Hadamard matrices for the widths real models have, not only powers of two: n = m · 2^k with
// H_n = H_m ⊗ H_{2^k} (Kronecker), H_{2^k} Sylvester's and H_m from a Paley construction —
// m = q + 1 for a prime q ≡ 3 (mod 4) (Paley I), m = 2(q + 1) for a prime q ≡ 1 (mod 4) (Paley II).
// SmolLM2: 576 = 36 · 16 (Paley II, q = 17), 1536 = 12 · 128 (Paley I, q = 11), heads 64; Qwen2.5:
// 896 = 28 · 32, 4864 = 76 · 64; Llama 3: 14336 = 28 · 512 (Llama 2's 11008 only as 5504 · 2, a
// nearly dense transform). Widths that need a prime-power field (52, 100) or a tabulated matrix (92)
// have no construction here and are refused by width.
// QuaRot, SpinQuant and ResQ use the same Kronecker shape; fast_hadamard is its O(n (m + log 2^k))
// transform.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace toga {

struct HadamardFactors {
  int64_t m = 1;     // the dense (Paley or 1) factor
  int64_t pow2 = 1;  // the Sylvester factor, 2^k
};

// The factorization with the largest power of two (the smallest dense factor), or an error naming n.
HadamardFactors hadamard_factors(int64_t n);
bool has_hadamard(int64_t n);

// The ±1 Hadamard matrix of order n (H·Hᵀ = n·I), float64, in the Kronecker order H_m ⊗ H_{2^k}.
torch::Tensor hadamard_matrix(int64_t n);

// x · H_n / √n over the last dimension (any float dtype; computed in x's dtype, float32 for
// reduced-precision inputs): the Sylvester factor by butterflies, the Paley factor densely.
torch::Tensor fast_hadamard(const torch::Tensor& x);

}  // namespace toga
