// config.json parsing: both RoPE layouts (transformers v4's rope_theta + rope_scaling, v5's
// rope_parameters), per-layer attention kinds, and every setting toga does not implement being a
// one-line error that names the file.
#include <gtest/gtest.h>

#include <functional>

#include <nlohmann/json.hpp>

#include "io/model_config.h"
#include "util/error.h"

namespace toga {
namespace {

using nlohmann::json;

const std::string kWhere = "/models/m/config.json";

ModelConfig parse(const json& j) { return ModelConfig::from_hf_json(j, kWhere); }

// Saved by transformers 5.25.0 (save_pretrained of LlamaConfig / Qwen2Config / Qwen3Config /
// MistralConfig); the Llama one was built from a Llama-3.1-style v4 config with rope_theta 500000
// and llama3 scaling, which v5 folds into rope_parameters.
const char* kV5Llama3 =
    R"({"architectures":["LlamaForCausalLM"],"attention_bias":false,"attention_dropout":0.0,"bos_token_id":1,
"eos_token_id":2,"head_dim":8,"hidden_act":"silu","hidden_size":32,"initializer_range":0.02,"intermediate_size":48,
"max_position_embeddings":131072,"mlp_bias":false,"model_type":"llama","num_attention_heads":4,"num_hidden_layers":2,
"num_key_value_heads":2,"pad_token_id":null,"pretraining_tp":1,"rms_norm_eps":1e-06,"rope_parameters":{"factor":32.0,
"high_freq_factor":4.0,"low_freq_factor":1.0,"original_max_position_embeddings":8192,"rope_theta":500000.0,
"rope_type":"llama3"},"tie_word_embeddings":false,"transformers_version":"5.25.0","use_cache":true,"vocab_size":61})";
const char* kV5Qwen2 =
    R"({"architectures":["Qwen2ForCausalLM"],"attention_dropout":0.0,"bos_token_id":null,"eos_token_id":null,
"hidden_act":"silu","hidden_size":32,"initializer_range":0.02,"intermediate_size":48,"layer_types":["full_attention",
"full_attention"],"max_position_embeddings":32768,"max_window_layers":21,"model_type":"qwen2","num_attention_heads":4,
"num_hidden_layers":2,"num_key_value_heads":2,"pad_token_id":null,"rms_norm_eps":1e-06,"rope_parameters":{
"rope_theta":1000000.0,"rope_type":"default"},"sliding_window":null,"tie_word_embeddings":true,
"transformers_version":"5.25.0","use_cache":true,"use_sliding_window":false,"vocab_size":61})";
const char* kV5Qwen3 =
    R"({"architectures":["Qwen3ForCausalLM"],"attention_bias":false,"attention_dropout":0.0,"bos_token_id":null,
"eos_token_id":null,"head_dim":16,"hidden_act":"silu","hidden_size":32,"initializer_range":0.02,"intermediate_size":48,
"layer_types":["full_attention","full_attention"],"max_position_embeddings":32768,"max_window_layers":28,
"model_type":"qwen3","num_attention_heads":4,"num_hidden_layers":2,"num_key_value_heads":2,"pad_token_id":null,
"rms_norm_eps":1e-06,"rope_parameters":{"rope_theta":1000000.0,"rope_type":"default"},"sliding_window":null,
"tie_word_embeddings":false,"transformers_version":"5.25.0","use_cache":true,"use_sliding_window":false,
"vocab_size":61})";
const char* kV5Mistral =
    R"({"architectures":["MistralForCausalLM"],"attention_dropout":0.0,"bos_token_id":1,"eos_token_id":2,"head_dim":8,
"hidden_act":"silu","hidden_size":32,"initializer_range":0.02,"intermediate_size":48,"max_position_embeddings":131072,
"model_type":"mistral","num_attention_heads":4,"num_hidden_layers":2,"num_key_value_heads":2,"pad_token_id":null,
"rms_norm_eps":1e-06,"rope_parameters":{"rope_theta":10000.0,"rope_type":"default"},"sliding_window":5,
"tie_word_embeddings":false,"transformers_version":"5.25.0","use_cache":true,"vocab_size":61})";
// Qwen2Config(num_hidden_layers=4, use_sliding_window=True, sliding_window=16, max_window_layers=2),
// as transformers 5.25.0 saves it: the last two layers slide, the first two do not.
const char* kV5Qwen2MixedWindow =
    R"({"architectures":["Qwen2ForCausalLM"],"hidden_act":"silu","hidden_size":32,"intermediate_size":48,
"layer_types":["full_attention","full_attention","sliding_attention","sliding_attention"],
"max_position_embeddings":32768,"max_window_layers":2,"model_type":"qwen2","num_attention_heads":4,
"num_hidden_layers":4,"num_key_value_heads":2,"rms_norm_eps":1e-06,"rope_parameters":{"rope_theta":10000.0,
"rope_type":"default"},"sliding_window":16,"tie_word_embeddings":false,"use_sliding_window":true,"vocab_size":61})";

// A Llama-3.1-style config in the v4 layout.
json v4_llama3() {
  return json::parse(R"({"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":32,
    "intermediate_size":48,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":61,
    "max_position_embeddings":131072,"rope_theta":500000.0,"rope_scaling":{"factor":32.0,"low_freq_factor":1.0,
    "high_freq_factor":4.0,"original_max_position_embeddings":8192,"rope_type":"llama3"}})");
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// The error is one line, starts with the file and contains `phrase`.
void expect_config_error(const json& j, const std::string& phrase) {
  const std::string msg = error_of([&] { parse(j); });
  ASSERT_FALSE(msg.empty()) << "no error; expected '" << phrase << "' for " << j.dump();
  EXPECT_EQ(msg.rfind(kWhere + ": ", 0), 0u) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  EXPECT_NE(msg.find(phrase), std::string::npos) << "expected '" << phrase << "' in: " << msg;
}

void expect_llama3(const ModelConfig& c, double factor, int old_ctx) {
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_EQ(c.rope_scaling.factor, factor);
  EXPECT_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, old_ctx);
}

TEST(ModelConfig, ReadsTheV4RopeLayout) {
  expect_llama3(parse(v4_llama3()), 32.0, 8192);

  auto linear = v4_llama3();
  linear["rope_scaling"] = {{"type", "linear"}, {"factor", 2.5}};  // the older spelling of rope_type
  auto c = parse(linear);
  EXPECT_EQ(c.rope_scaling.type, "linear");
  EXPECT_EQ(c.rope_scaling.factor, 2.5);
  EXPECT_EQ(c.rope_theta, 500000.0);

  auto none = v4_llama3();
  none["rope_scaling"] = nullptr;
  none.erase("rope_theta");
  c = parse(none);
  EXPECT_EQ(c.rope_scaling.type, "none");
  EXPECT_EQ(c.rope_theta, 10000.0);  // transformers' default theta
}

TEST(ModelConfig, ReadsTheV5RopeLayout) {
  const auto l3 = parse(json::parse(kV5Llama3));
  expect_llama3(l3, 32.0, 8192);
  EXPECT_EQ(l3.sliding_window, 0);

  for (const char* text : {kV5Qwen2, kV5Qwen3}) {
    const auto c = parse(json::parse(text));
    SCOPED_TRACE(c.architecture);
    EXPECT_EQ(c.rope_theta, 1000000.0);
    EXPECT_EQ(c.rope_scaling.type, "none");
    EXPECT_EQ(c.sliding_window, 0);
  }
  const auto m = parse(json::parse(kV5Mistral));
  EXPECT_EQ(m.rope_theta, 10000.0);
  EXPECT_EQ(m.sliding_window, 5);

  // Without a theta in rope_parameters the top-level one (or transformers' 10000) applies.
  auto j = json::parse(kV5Llama3);
  j["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 4}};
  auto c = parse(j);
  EXPECT_EQ(c.rope_scaling.type, "linear");
  EXPECT_EQ(c.rope_scaling.factor, 4.0);
  EXPECT_EQ(c.rope_theta, 10000.0);
  j["rope_theta"] = 250000;
  EXPECT_EQ(parse(j).rope_theta, 250000.0);

  // Like transformers v5, llama3's pretraining length falls back to the top-level key, then to
  // max_position_embeddings.
  j = json::parse(kV5Llama3);
  j["rope_parameters"].erase("original_max_position_embeddings");
  expect_llama3(parse(j), 32.0, 131072);
  j["original_max_position_embeddings"] = 4096;
  expect_llama3(parse(j), 32.0, 4096);
}

TEST(ModelConfig, BothLayoutsSayingTheSameAreAccepted) {
  auto j = json::parse(kV5Llama3);
  j["rope_theta"] = 500000;
  j["rope_scaling"] = v4_llama3()["rope_scaling"];
  expect_llama3(parse(j), 32.0, 8192);
  // rope_type "default" is no scaling in either place.
  j = json::parse(kV5Qwen2);
  j["rope_theta"] = 1000000.0;
  j["rope_scaling"] = {{"rope_type", "default"}};
  EXPECT_EQ(parse(j).rope_scaling.type, "none");
}

TEST(ModelConfig, LayoutsThatDisagreeAreAnErrorNamingTheFile) {
  auto j = json::parse(kV5Llama3);
  j["rope_theta"] = 10000.0;
  expect_config_error(j, "'rope_theta' 10000 disagrees with the rope_parameters rope_theta 500000");

  j = json::parse(kV5Llama3);
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 32.0}};
  expect_config_error(j, "'rope_parameters' (rope_type llama3, factor 32");
  expect_config_error(j, "and 'rope_scaling' (rope_type linear, factor 32) disagree");

  j = json::parse(kV5Llama3);
  j["rope_scaling"] = v4_llama3()["rope_scaling"];
  j["rope_scaling"]["factor"] = 8.0;
  expect_config_error(j, "disagree");

  j = json::parse(kV5Qwen3);
  j["rope_scaling"] = {{"rope_type", "default"}, {"rope_theta", 10000.0}};
  expect_config_error(j, "disagree");

  j = json::parse(kV5Llama3);
  j["original_max_position_embeddings"] = 4096;
  expect_config_error(j, "'original_max_position_embeddings' 4096 disagrees with the rope scaling's 8192");

  j = json::parse(kV5Llama3);
  j["rope_parameters"]["type"] = "linear";
  expect_config_error(j, "'rope_parameters' has rope_type 'llama3' but type 'linear'");
}

TEST(ModelConfig, UnsupportedRopeSettingsAreOneLineErrorsNamingTheFile) {
  for (const char* type : {"yarn", "dynamic", "longrope", "proportional", "su", "mrope"}) {
    SCOPED_TRACE(type);
    auto j = json::parse(kV5Llama3);
    j["rope_parameters"] = {{"rope_type", type}, {"factor", 4.0}, {"rope_theta", 10000.0}};
    expect_config_error(j, fmt::format("unsupported 'rope_parameters' rope_type '{}'", type));
    j = v4_llama3();
    j["rope_scaling"] = {{"type", type}, {"factor", 4.0}};
    expect_config_error(j, fmt::format("unsupported 'rope_scaling' rope_type '{}'", type));
  }
  // Keys that change the forward of a supported rope type.
  const std::vector<std::pair<std::string, json>> extra = {
      {"attention_factor", 1.2}, {"mrope_section", {2, 1, 1}}, {"mrope_interleaved", true}, {"mscale", 1.0},
      {"beta_fast", 32},         {"short_factor", {1.0, 1.0}}, {"truncate", false}};
  for (const auto& [key, value] : extra) {
    SCOPED_TRACE(key);
    auto j = json::parse(kV5Llama3);
    j["rope_parameters"][key] = value;
    expect_config_error(j, fmt::format("unsupported 'rope_parameters' entry '{}'", key));
  }
  auto j = json::parse(kV5Qwen3);
  j["rope_parameters"]["partial_rotary_factor"] = 0.5;
  expect_config_error(j, "'rope_parameters' partial_rotary_factor 0.5 is not supported");
  j = json::parse(kV5Qwen3);
  j["partial_rotary_factor"] = 0.25;
  expect_config_error(j, "partial_rotary_factor 0.25 is not supported");
  j["partial_rotary_factor"] = 1.0;  // a full rotation is what toga does
  EXPECT_EQ(parse(j).rope_theta, 1000000.0);

  j = json::parse(kV5Qwen3);
  j["rope_parameters"] = {{"full_attention", {{"rope_type", "default"}, {"rope_theta", 10000.0}}},
                          {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 1000000.0}}}};
  expect_config_error(j, "per-layer-type 'rope_parameters' ('full_attention') are not supported");

  j = json::parse(kV5Llama3);
  j["rope_parameters"].erase("low_freq_factor");
  expect_config_error(j, "'rope_parameters' of rope_type 'llama3' has no 'low_freq_factor'");
  j = v4_llama3();
  j["rope_scaling"].erase("factor");
  expect_config_error(j, "'rope_scaling' of rope_type 'llama3' has no 'factor'");
  j = json::parse(kV5Llama3);
  j["rope_parameters"]["high_freq_factor"] = 1.0;
  expect_config_error(j, "high_freq_factor 1 must exceed low_freq_factor 1");
  j = json::parse(kV5Llama3);
  j["rope_parameters"] = "llama3";
  expect_config_error(j, "'rope_parameters' is not a JSON object");

  j = json::parse(kV5Llama3);
  j["hidden_act"] = "gelu";
  expect_config_error(j, "unsupported hidden_act 'gelu'");
}

TEST(ModelConfig, SlidingWindowLayersTogaWouldNotRunAreErrors) {
  expect_config_error(json::parse(kV5Qwen2MixedWindow),
                      "layer 2 is sliding_attention but layer 0 is full_attention: per-layer sliding-window attention "
                      "is not supported");
  // Without layer_types (a v4 file) the same mix follows from max_window_layers.
  auto j = json::parse(kV5Qwen2MixedWindow);
  j.erase("layer_types");
  expect_config_error(j, "per-layer sliding-window attention is not supported");
  j["max_window_layers"] = 1;
  j["num_hidden_layers"] = 2;
  expect_config_error(j, "layer 1 is sliding_attention but layer 0 is full_attention");

  // Llama applies no window: layer_types asking for one describe another model.
  j = json::parse(kV5Llama3);
  j["layer_types"] = {"full_attention", "sliding_attention"};
  expect_config_error(j, "layer 1 is 'sliding_attention' in 'layer_types', but a llama model with this config runs "
                         "every layer as full_attention");
  j = json::parse(kV5Mistral);
  j["layer_types"] = {"sliding_attention", "full_attention"};
  expect_config_error(j, "layer 1 is 'full_attention' in 'layer_types'");
  j = json::parse(kV5Qwen3);
  j["layer_types"] = {"sliding_attention", "sliding_attention"};  // use_sliding_window is false
  expect_config_error(j, "'layer_types' has sliding_attention layers but no sliding window is in use");
  j = json::parse(kV5Qwen3);
  j["layer_types"] = {"chunked_attention", "chunked_attention"};
  expect_config_error(j, "unsupported layer type 'chunked_attention' in layer 0 of 'layer_types'");
  j = json::parse(kV5Qwen3);
  j["layer_types"] = {"full_attention"};
  expect_config_error(j, "'layer_types' must list one entry per layer (2)");
}

TEST(ModelConfig, WindowSettingsThatAgreeWithTheForwardAreAccepted) {
  // Qwen2.5 files carry a sliding_window value with use_sliding_window false: no window.
  auto j = json::parse(kV5Qwen2);
  j.erase("layer_types");
  j["sliding_window"] = 131072;
  EXPECT_EQ(parse(j).sliding_window, 0);
  // use_sliding_window with max_window_layers past the last layer: every layer is full attention.
  j["use_sliding_window"] = true;
  j["max_window_layers"] = 2;
  EXPECT_EQ(parse(j).sliding_window, 0);
  // ... and from layer 0 on, every layer slides: that is toga's sliding window.
  j["max_window_layers"] = 0;
  j["sliding_window"] = 7;
  EXPECT_EQ(parse(j).sliding_window, 7);
  j["layer_types"] = {"sliding_attention", "sliding_attention"};
  EXPECT_EQ(parse(j).sliding_window, 7);

  // Llama layer_types that are all full attention say what toga does.
  j = json::parse(kV5Llama3);
  j["layer_types"] = {"full_attention", "full_attention"};
  EXPECT_EQ(parse(j).sliding_window, 0);

  // Mistral: transformers' default window where the key is missing; null is none.
  j = json::parse(kV5Mistral);
  j.erase("sliding_window");
  EXPECT_EQ(parse(j).sliding_window, 4096);
  j["sliding_window"] = nullptr;
  EXPECT_EQ(parse(j).sliding_window, 0);
  j["layer_types"] = {"full_attention", "full_attention"};
  EXPECT_EQ(parse(j).sliding_window, 0);
}

TEST(ModelConfig, WritesTheV4LayoutThatBothTransformersVersionsRead) {
  const auto l3 = parse(json::parse(kV5Llama3));
  const json out = l3.to_hf_json();
  EXPECT_FALSE(out.contains("rope_parameters"));
  EXPECT_EQ(out.at("rope_theta"), 500000.0);
  EXPECT_EQ(out.at("rope_scaling").at("rope_type"), "llama3");
  expect_llama3(parse(out), 32.0, 8192);

  // A Qwen window over every layer must say so: transformers starts it at layer 28 by default.
  auto j = json::parse(kV5Qwen2);
  j.erase("layer_types");
  j["use_sliding_window"] = true;
  j["sliding_window"] = 7;
  j["max_window_layers"] = 0;
  const auto q = parse(j);
  const json qj = q.to_hf_json();
  EXPECT_EQ(qj.at("max_window_layers"), 0);
  EXPECT_EQ(parse(qj).sliding_window, 7);
  for (const char* text : {kV5Qwen2, kV5Qwen3, kV5Mistral}) {
    const auto c = parse(json::parse(text));
    const auto back = parse(c.to_hf_json());
    EXPECT_EQ(back.rope_theta, c.rope_theta);
    EXPECT_EQ(back.sliding_window, c.sliding_window);
  }
}

}  // namespace
}  // namespace toga
