#include "runtime/linear.h"

#include <type_traits>

#include "util/error.h"

namespace toga::rt {

void Linear::forward(const float* x, int64_t tokens, int64_t x_width, float* y, LinearScratch& scratch) const {
  if (in_index.empty() && x_width != cols) fail("linear: input width {} for {} columns", x_width, cols);
  if (kind == LinearKind::kWeightActivation) {
    quantize_activations(x, tokens, packed, act, scratch.codes, isa, in_index.empty() ? nullptr : in_index.data(), x_width);
    qgemm(scratch.codes, packed, y, isa);
  } else {
    const float* in = x;
    if (!in_index.empty()) {
      scratch.gathered.resize(size_t(tokens * cols));
      for (int64_t t = 0; t < tokens; ++t)
        for (int64_t k = 0; k < cols; ++k) scratch.gathered[size_t(t * cols + k)] = x[t * x_width + in_index[size_t(k)]];
      in = scratch.gathered.data();
    }
    if (kind == LinearKind::kDense) sgemm(in, tokens, dense, y, isa);
    else wgemm(in, tokens, packed, y, isa);
  }
  if (!bias.empty())
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t n = 0; n < rows; ++n) y[t * rows + n] += bias[size_t(n)];
}

std::string Linear::kernel_name() const {
  const char* kinds[] = {"dense-", "packed-weight-only-", "packed-"};
  return std::string(kinds[int(kind)]) + isa_name(isa);
}

int64_t Linear::weight_bytes() const {
  if (kind == LinearKind::kDense) return int64_t(dense.data.size() * sizeof(float));
  return int64_t(packed.data.size() + packed.scales.size() * sizeof(float) + packed.zero_offset.size() * sizeof(float));
}

bool append_rows(Linear& a, const Linear& b) {
  if (a.kind != b.kind || a.cols != b.cols || a.isa != b.isa || a.in_index != b.in_index || a.rows % 16 != 0 ||
      a.bias.empty() != b.bias.empty())
    return false;
  if (a.kind == LinearKind::kDense) {
    a.dense.data.insert(a.dense.data.end(), b.dense.data.begin(), b.dense.data.end());
    a.dense.rows += b.dense.rows;
    a.dense.panels += b.dense.panels;
  } else {
    PackedWeight& p = a.packed;
    const PackedWeight& q = b.packed;
    if (p.blocks.size() != q.blocks.size()) return false;
    for (size_t i = 0; i < p.blocks.size(); ++i)
      if (p.blocks[i].begin != q.blocks[i].begin || p.blocks[i].end != q.blocks[i].end || p.blocks[i].bits != q.blocks[i].bits)
        return false;
    if (a.kind == LinearKind::kWeightActivation && a.act.clip != b.act.clip) return false;
    // Per-block row arrays: [blocks][panels·16] each, so interleave block by block.
    const int64_t nb = int64_t(p.blocks.size()), pa = p.panels * 16, pb = q.panels * 16;
    auto merge = [&](auto& into, const auto& from) {
      std::remove_reference_t<decltype(into)> out;
      out.reserve(into.size() + from.size());
      for (int64_t bi = 0; bi < nb; ++bi) {
        out.insert(out.end(), into.begin() + bi * pa, into.begin() + (bi + 1) * pa);
        out.insert(out.end(), from.begin() + bi * pb, from.begin() + (bi + 1) * pb);
      }
      into = std::move(out);
    };
    merge(p.scales, q.scales);
    merge(p.zero_offset, q.zero_offset);
    merge(p.code_offset, q.code_offset);
    p.data.insert(p.data.end(), q.data.begin(), q.data.end());
    p.rows += q.rows;
    p.panels += q.panels;
    p.integer_zeros = p.integer_zeros && q.integer_zeros;
  }
  a.rows += b.rows;
  a.bias.insert(a.bias.end(), b.bias.begin(), b.bias.end());
  return true;
}

}  // namespace toga::rt
