#include "quant/packed_kernel.h"

#include "runtime/linear.h"
#include "util/error.h"

namespace toga {

namespace {

// A site whose linear runs on the runtime's kernels (the site has already gathered its input).
class RuntimeLinearKernel final : public LinearKernel {
 public:
  explicit RuntimeLinearKernel(std::shared_ptr<const rt::Linear> linear) : linear_(std::move(linear)) {}
  std::string name() const override { return linear_->kernel_name(); }
  bool quantizes_input() const override { return linear_->kind == rt::LinearKind::kWeightActivation; }
  std::shared_ptr<const rt::Linear> runtime_linear() const override { return linear_; }

  torch::Tensor apply(const LinearSite& site, const torch::Tensor& x) const override {
    if (x.requires_grad()) fail("site '{}': the packed kernel has no backward (load with --fake-quant)", site.name);
    const auto shape = x.sizes().vec();
    const torch::Tensor xf = x.detach().to(torch::kCPU, torch::kFloat32).contiguous().reshape({-1, linear_->cols});
    torch::Tensor y = torch::empty({xf.size(0), linear_->rows}, torch::kFloat32);
    thread_local rt::LinearScratch scratch;  // reused: no allocation per call once warm
    linear_->forward(xf.data_ptr<float>(), xf.size(0), linear_->cols, y.data_ptr<float>(), scratch);
    if (site.bias.defined()) y += site.bias.to(torch::kFloat32);
    auto out_shape = shape;
    out_shape.back() = linear_->rows;
    return y.reshape(out_shape).to(x.device(), x.scalar_type());
  }

 private:
  std::shared_ptr<const rt::Linear> linear_;
};

rt::PackedWeight pack(const QuantizedLinear& q, const std::vector<rt::ColumnBlock>& blocks) {
  const torch::Tensor codes = q.weight.codes.to(torch::kCPU, torch::kInt8).contiguous();
  const torch::Tensor scales = q.weight.scales.to(torch::kCPU, torch::kFloat32).contiguous();
  const torch::Tensor zeros = q.weight.zeros.to(torch::kCPU, torch::kFloat32).contiguous();
  return rt::pack_weight(codes.data_ptr<int8_t>(), scales.data_ptr<float>(), zeros.data_ptr<float>(), codes.size(0),
                         codes.size(1), blocks);
}

}  // namespace

std::shared_ptr<const LinearKernel> make_packed_kernel(const QuantizedLinear& q, const LinearSite& site, std::string* why_not) {
  auto no = [&](const std::string& why) -> std::shared_ptr<const LinearKernel> {
    if (why_not) *why_not = why;
    return nullptr;
  };
  if (site.custom_input || site.custom_weight || site.custom_output) return no("the site has custom functions");
  if (site.weight.device() != torch::kCPU) return no("the packed kernels run on the CPU");
  if (q.weight.has_codebook()) return no("codebook (BiLLM) columns run on the dense kernel");
  if (q.weight.column_scales.defined()) return no("column scales (PTQ1.61) run on the dense kernel");
  const int64_t in = q.weight.codes.size(1);
  const bool weight_only = !q.act_low.quantized() && (q.salient == 0 || !q.act_high.quantized());
  if (weight_only) {
    std::vector<rt::ColumnBlock> blocks;
    for (const ColumnGroup& g : q.weight.groups) {
      if (g.bits > 8) return no("16-bit weight columns");
      blocks.push_back({g.col_begin, g.col_end, rt::container_bits(g.bits)});
    }
    auto linear = std::make_shared<rt::Linear>();
    linear->kind = rt::LinearKind::kWeightOnly;
    linear->packed = pack(q, blocks);
    linear->rows = linear->packed.rows;
    linear->cols = linear->packed.cols;
    linear->isa = rt::selected_isa();
    return std::make_shared<RuntimeLinearKernel>(std::move(linear));
  }
  if (!q.act_low.quantized() || (q.salient > 0 && !q.act_high.quantized()))
    return no("activations quantized in one partition only");
  const auto act_groups = column_groups(in, q.salient, q.act_low, q.act_high);
  if (act_groups.size() != q.weight.groups.size()) return no("weight and activation groups differ");
  std::vector<rt::ColumnBlock> blocks;
  rt::ActivationQuant aq;
  for (size_t i = 0; i < act_groups.size(); ++i) {
    const ColumnGroup& wg = q.weight.groups[i];
    const ColumnGroup& ag = act_groups[i];
    if (wg.col_begin != ag.col_begin || wg.col_end != ag.col_end) return no("weight and activation groups differ");
    if ((wg.bits != 4 && wg.bits != 8) || wg.bits != ag.bits) return no("the packed kernels take 4 or 8 bits, the same for W and A");
    const QuantSpec& as = wg.col_begin >= in - q.salient ? q.act_high : q.act_low;
    if (!as.symmetric || as.mse_clip) return no("asymmetric or MSE-clipped activations");
    blocks.push_back({wg.col_begin, wg.col_end, wg.bits});
    aq.clip.push_back(as.clip_ratio);
  }
  auto linear = std::make_shared<rt::Linear>();
  linear->kind = rt::LinearKind::kWeightActivation;
  linear->packed = pack(q, blocks);
  if (!linear->packed.integer_zeros) return no("fractional weight zero points");
  linear->act = std::move(aq);
  linear->rows = linear->packed.rows;
  linear->cols = linear->packed.cols;
  linear->isa = rt::selected_isa();
  return std::make_shared<RuntimeLinearKernel>(std::move(linear));
}

int use_packed_kernels(Model& model, const std::vector<QuantizedLinear>& linears) {
  int n = 0;
  for (const auto& q : linears) {
    LinearSite& s = model.site(q.site);
    if (auto k = make_packed_kernel(q, s)) {
      s.kernel = std::move(k);
      ++n;
    }
  }
  return n;
}

}  // namespace toga
