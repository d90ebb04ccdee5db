// load_model converts large tensors a chunk of rows at a time: the result must not depend on the
// chunking (nor on whether the source can read rows at all), and a non-finite value anywhere is
// reported with the tensor's total count and the first flat index, whichever chunk it sits in.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "model/model.h"
#include "reference_llama.h"
#include "util/error.h"

using namespace toga;
using namespace toga::test;

namespace {

// Hides read_f32_rows, so the loader must read each tensor whole.
class WholeTensorsOnly : public TensorSource {
 public:
  explicit WholeTensorsOnly(std::unique_ptr<TensorSource> inner) : inner_(std::move(inner)) {}
  std::vector<TensorInfo> tensors() const override { return inner_->tensors(); }
  void read_f32(const std::string& name, float* dst) const override { inner_->read_f32(name, dst); }
  std::string description() const override { return inner_->description(); }

 private:
  std::unique_ptr<TensorSource> inner_;
};

// The embedding (16384 x 512, 8M values) spans several 4M-element chunks; the rest is small.
ModelConfig wide_vocab_config() {
  ModelConfig c = tiny_config(Family::Llama);
  c.hidden_size = 512;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 4;
  c.head_dim = 64;
  c.intermediate_size = 64;
  c.num_hidden_layers = 1;
  c.vocab_size = 16384;
  return c;
}

Checkpoint checkpoint(const ModelConfig& c, const ReferenceWeights& w, bool row_reads) {
  Checkpoint ck;
  ck.config = c;
  auto src = std::make_unique<MemoryTensorSource>("memory");
  fill_source(w, *src);
  if (row_reads) ck.tensors = std::move(src);
  else ck.tensors = std::make_unique<WholeTensorsOnly>(std::move(src));
  return ck;
}

std::vector<std::pair<std::string, torch::Tensor>> all_tensors(const Model& m) {
  std::vector<std::pair<std::string, torch::Tensor>> out = {{"embed", m.embed}, {"final_norm", m.final_norm},
                                                            {"lm_head", m.lm_head.weight}};
  for (size_t i = 0; i < m.blocks.size(); ++i) {
    const Block& b = m.blocks[i];
    out.push_back({"attn_norm" + std::to_string(i), b.attn_norm});
    out.push_back({"mlp_norm" + std::to_string(i), b.mlp_norm});
    for (const LinearSite* s : {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down}) out.push_back({s->name, s->weight});
  }
  return out;
}

std::string load_error(const ModelConfig& c, const ReferenceWeights& w, bool row_reads) {
  try {
    load_model(checkpoint(c, w, row_reads));
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST(Loader, ChunkedConversionEqualsWholeTensorConversion) {
  const ModelConfig c = wide_vocab_config();
  const ReferenceWeights w = random_weights(c, 41);
  const Model fp32 = load_model(checkpoint(c, w, true));
  // fp32 weights are the source's values exactly.
  const auto& e = w.get(names::embed());
  ASSERT_EQ(fp32.embed.numel(), static_cast<int64_t>(e.size()));
  EXPECT_EQ(0, std::memcmp(fp32.embed.data_ptr<float>(), e.data(), e.size() * sizeof(float)));
  for (torch::Dtype dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    LoadOptions opts;
    opts.dtype = dtype;
    for (bool row_reads : {true, false}) {
      SCOPED_TRACE(dtype_string(dtype) + (row_reads ? " chunked" : " whole tensors"));
      const Model m = load_model(checkpoint(c, w, row_reads), opts);
      const auto want = all_tensors(fp32), got = all_tensors(m);
      ASSERT_EQ(want.size(), got.size());
      for (size_t i = 0; i < want.size(); ++i) {
        EXPECT_EQ(got[i].second.scalar_type(), dtype) << got[i].first;
        EXPECT_TRUE(torch::equal(got[i].second, want[i].second.to(dtype))) << got[i].first;
      }
    }
  }
}

TEST(Loader, NonFiniteValuesAreCountedAcrossChunks) {
  const ModelConfig c = wide_vocab_config();
  ReferenceWeights w = random_weights(c, 43);
  auto& e = w.t[names::embed()].second;
  ASSERT_GT(e.size(), size_t(6000000));
  e[6000000] = std::numeric_limits<float>::quiet_NaN();  // second chunk only
  for (bool row_reads : {true, false}) {
    const std::string msg = load_error(c, w, row_reads);
    EXPECT_NE(msg.find("'model.embed_tokens.weight' holds 1 non-finite value(s) (NaN or Inf), the first at flat "
                       "index 6000000"),
              std::string::npos)
        << msg;
  }
  e[3000000] = -std::numeric_limits<float>::infinity();  // first chunk
  e[8000000] = std::numeric_limits<float>::infinity();   // second chunk again
  for (bool row_reads : {true, false}) {
    const std::string msg = load_error(c, w, row_reads);
    EXPECT_NE(msg.find("holds 3 non-finite value(s) (NaN or Inf), the first at flat index 3000000"), std::string::npos)
        << msg;
    EXPECT_NE(msg.find("memory"), std::string::npos) << msg;  // names the source
  }
}
