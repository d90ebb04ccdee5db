// ResQ's front end on tiny float64 models: the rotated model computes the same function; in the
// rotated basis the residual second moment (q_proj and up_proj inputs, all layers) is block-diagonal
// between the low and the high subspace and the high block carries the top-k eigenvalues of the
// unrotated moment (an independent float64 eigvalsh); likewise per value head; the Plan keeps the
// right channels at 8 bits. The CLI writes a ResQ checkpoint every verb loads.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "cli/cli_util.h"
#include "model/tiny_model.h"
#include "quant/calibration.h"
#include "quant/recipes.h"
#include "quant/resq.h"
#include "quant/rotation.h"
#include "test_util.h"
#include "util/atomic_file.h"

using namespace toga;
using namespace toga::test;
using torch::Tensor;

namespace {

// Σ xᵀx of q_proj and up_proj inputs over every layer, and per layer and kv head Σ vᵀv of v_proj's
// outputs, from a plain forward with observers.
struct Moments {
  Tensor residual;
  std::vector<Tensor> values;
};

Moments moments(Model& m, const Tensor& ids) {
  const auto& c = m.config;
  Moments mo;
  mo.residual = torch::zeros({c.hidden_size, c.hidden_size}, torch::kFloat64);
  std::vector<ObserverHandle> h;
  mo.values.reserve(m.blocks.size());  // the observers hold references into it
  for (auto& b : m.blocks) {
    auto acc = [&mo](const LinearSite&, const Tensor& x) {
      const Tensor x2 = x.reshape({-1, x.size(-1)});
      mo.residual += x2.t().matmul(x2);
    };
    h.push_back(b.q.add_observer(acc));
    h.push_back(b.up.add_observer(acc));
    mo.values.push_back(torch::zeros({c.num_key_value_heads, c.head_dim, c.head_dim}, torch::kFloat64));
    Tensor& v = mo.values.back();
    h.push_back(b.v.add_observer([&v, &c](const LinearSite& s, const Tensor& x) {
      Tensor out = x.reshape({-1, x.size(-1)}).matmul(s.weight.t());
      if (s.bias.defined()) out = out + s.bias;
      const Tensor vh = out.reshape({-1, c.num_key_value_heads, c.head_dim}).transpose(0, 1);
      v += vh.transpose(1, 2).matmul(vh);
    }));
  }
  torch::NoGradGuard ng;
  m.forward(ids);
  return mo;
}

// Max |off-diagonal block| relative to the largest entry, and the trace of the last k.
void expect_split(const Tensor& c, int64_t k, const Tensor& reference_eigenvalues, const std::string& what) {
  const int64_t n = c.size(0);
  const double scale = c.abs().max().item<double>();
  EXPECT_LT(c.narrow(0, 0, n - k).narrow(1, n - k, k).abs().max().item<double>() / scale, 1e-9) << what;
  const double top = reference_eigenvalues.narrow(0, n - k, k).sum().item<double>();
  EXPECT_NEAR(c.narrow(0, n - k, k).narrow(1, n - k, k).trace().item<double>(), top, 1e-8 * std::abs(top)) << what;
}

}  // namespace

TEST(Resq, RotatedModelKeepsItsLogitsAndPutsTheTopVarianceSubspaceLast) {
  for (Family f : {Family::Llama, Family::Qwen2, Family::Qwen3}) {
    const ModelConfig c = tiny_config(f);
    Model m = random_model(c, 21, torch::kFloat64);
    torch::manual_seed(5);
    const Tensor calib = torch::randint(c.vocab_size, {3, 16}, torch::kLong);
    const Tensor before = m.forward(calib);
    Model folded = random_model(c, 21, torch::kFloat64);
    fold_norm_gains(folded);
    const Moments ref = moments(folded, calib);
    QuantizeOptions o = resq_defaults();
    const auto prov = resq_prepare(m, calib, o);
    EXPECT_LT((m.forward(calib) - before).abs().max().item<double>(), 1e-10) << int(f);
    const int64_t k = prov["residual_high_channels"].get<int64_t>(), kv_k = prov["value_high_dims_per_head"].get<int64_t>();
    EXPECT_EQ(k, 4);
    EXPECT_EQ(kv_k, std::llround(0.125 * c.head_dim));
    const Moments rotated = moments(m, calib);
    // Damping (1 % of mean diag) shifts every eigenvalue alike: the split is the undamped one's.
    expect_split(rotated.residual, k, torch::linalg_eigvalsh(ref.residual), "residual");
    for (size_t l = 0; l < m.blocks.size(); ++l)
      for (int64_t g = 0; g < c.num_key_value_heads; ++g)
        expect_split(rotated.values[l][g], kv_k, torch::linalg_eigvalsh(ref.values[l][g]),
                     "layer " + std::to_string(l) + " value head " + std::to_string(g));
  }
}

TEST(Resq, PlanKeepsTheLastChannelsOfEverySubspaceHigh) {
  const ModelConfig c = tiny_config(Family::Llama);
  Model m = random_model(c, 22, torch::kFloat64);
  const Plan p = resq_plan(m, resq_defaults());
  const SitePlan& q = p.sites.at("layers.0.self_attn.q_proj");
  EXPECT_FALSE(q.order.defined());
  EXPECT_EQ(q.order_rule, "");
  EXPECT_EQ(q.salient_count, 4);
  const SitePlan& o = p.sites.at("layers.1.self_attn.o_proj");
  ASSERT_TRUE(o.salient.defined());
  EXPECT_EQ(o.salient.numel(), c.num_attention_heads * 1);  // 1 of 8 dims per head
  for (int64_t h = 0; h < c.num_attention_heads; ++h) EXPECT_EQ(o.salient[h].item<int64_t>(), h * c.head_dim + c.head_dim - 1);
  const SitePlan& down = p.sites.at("layers.1.mlp.down_proj");
  EXPECT_EQ(down.transform, "hadamard");
  EXPECT_EQ(down.salient_count, 0);
  EXPECT_EQ(p.kv.bits, 4);
}

TEST(Resq, QuantizeWritesAResqCheckpointEveryVerbLoads) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  const std::string out = dir / "resq";
  // stories260K's MLP is 172 wide (Llama 2's 11008 = 172 · 64 in miniature): no Hadamard matrix,
  // refused by width unless a random rotation is asked for.
  auto r = run_toga("quantize " + stories260k_path() + " " + out + " --method resq --calib 4 --calib-seqlen 128 --threads 1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("width 172"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--online-transform rotation"), std::string::npos) << r.output;
  r = run_toga("quantize " + stories260k_path() + " " + out +
               " --method resq --online-transform rotation --calib 4 --calib-seqlen 128 --threads 1");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto config = nlohmann::json::parse(read_text_file(out + "/config.json"));
  EXPECT_EQ(config["quantization_config"]["recipe"], "resq");
  EXPECT_EQ(config["quantization_config"]["provenance"]["rotation"]["method"], "resq");
  EXPECT_FALSE(config["tie_word_embeddings"].get<bool>());
  r = run_toga("eval kld " + out + " --base " + stories260k_path() + " --dataset tinystories --max-windows 2 --threads 1");
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_toga("quantize " + stories260k_path() + " " + out + "2 --method resq --rotate hadamard --calib 2 --threads 1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("chooses its own rotation"), std::string::npos) << r.output;
}
