// SpinQuant on tiny float64 models: the training forward (rotations through the sites' hooks, no
// quantizers) computes the model's own loss, so the hooks wire R1, R2 and R4 right; training at A4KV4
// lowers the quantized loss; the rotations stay orthogonal; the model is left as it was. The CLI
// writes a SpinQuant checkpoint every verb loads.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "cli/cli_util.h"
#include "model/tiny_model.h"
#include "quant/rotation.h"
#include "quant/spinquant.h"
#include "quant/transforms.h"
#include "test_util.h"
#include "util/atomic_file.h"

using namespace toga;
using namespace toga::test;
using torch::Tensor;

namespace {

double ce(const Model& m, const Tensor& ids) {
  torch::NoGradGuard ng;
  const int64_t T = ids.size(1);
  const Tensor logits = m.forward(ids).narrow(1, 0, T - 1);
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}), ids.narrow(1, 1, T - 1).reshape({-1}))
      .item<double>();
}

double orthogonality_error(const Tensor& r) {
  return (r.t().matmul(r) - torch::eye(r.size(0), r.options())).abs().max().item<double>();
}

}  // namespace

TEST(SpinQuant, TrainingForwardWithoutQuantizersIsTheModel) {
  for (Family f : {Family::Llama, Family::Qwen2}) {
    ModelConfig c = tiny_config(f);
    c.intermediate_size = 48;  // 12 · 4: a Hadamard for R4
    Model m = random_model(c, 31, torch::kFloat64);
    fold_norm_gains(m);
    const Tensor ids = random_ids(c, 3, 1, 12);
    const Tensor q_before = m.blocks[0].q.weight.clone();
    SpinQuantTraining t;
    t.act = QuantSpec{16};
    t.kv = QuantSpec{16};
    t.steps = 1;
    t.lr = 1e-12;
    t.progress = false;
    const auto r = learn_rotations(m, ids, t);
    ASSERT_EQ(r.losses.size(), 1u);
    EXPECT_NEAR(r.losses[0], ce(m, ids), 1e-6) << int(f);  // float32 cross entropy of float64 logits
    EXPECT_TRUE(torch::equal(m.blocks[0].q.weight, q_before)) << "weights untouched";
    EXPECT_FALSE(bool(m.blocks[0].q.custom_input)) << "hooks removed";
    EXPECT_FALSE(bool(m.kv_transform));
  }
}

TEST(SpinQuant, TrainingLowersTheQuantizedLossAndKeepsRotationsOrthogonal) {
  ModelConfig c = tiny_config(Family::Llama);
  c.intermediate_size = 48;
  Model m = random_model(c, 32, torch::kFloat64);
  fold_norm_gains(m);
  const Tensor ids = random_ids(c, 4, 1, 24);
  SpinQuantTraining t;
  t.steps = 40;
  t.progress = false;
  const auto r = learn_rotations(m, ids, t);
  EXPECT_LT(r.losses.back(), r.losses.front());
  EXPECT_LT(orthogonality_error(r.r1), 1e-6);
  for (const auto& r2 : r.r2) EXPECT_LT(orthogonality_error(r2), 1e-6);
  EXPECT_FALSE(torch::allclose(r.r1, orthogonal_transform_f64("hadamard", c.hidden_size, 1))) << "R1 moved";
}

TEST(SpinQuant, QuantizeWritesASpinQuantCheckpointEveryVerbLoads) {
  TOGA_REQUIRE_FILE(stories260k_path());
  ScratchDir dir;
  const std::string out = dir / "spin";
  auto r = run_toga("quantize " + stories260k_path() + " " + out +
                    " --method spinquant --online-transform rotation --rotation-steps 3 --calib 2 --calib-seqlen 64 --threads 1");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto config = nlohmann::json::parse(read_text_file(out + "/config.json"));
  EXPECT_EQ(config["quantization_config"]["recipe"], "spinquant");
  EXPECT_EQ(config["quantization_config"]["provenance"]["rotation"]["training"]["loss"].size(), 3u);
  r = run_toga("eval kld " + out + " --base " + stories260k_path() + " --dataset tinystories --max-windows 2 --threads 1");
  ASSERT_EQ(r.code, 0) << r.output;
}
