#include "tokenizer/hf_json.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <unordered_map>

#include "tokenizer/bpe.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace toga {

using json = nlohmann::json;

static json parse_json_file(const std::string& path) {
  const std::string text = read_text_file(path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    fail_file(path, "invalid JSON: {}", e.what());
  }
}

static std::string type_of(const json& j) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) return "";
  return j["type"].get<std::string>();
}

static bool flag(const json& j, const char* key, bool def) {
  if (!j.contains(key) || j[key].is_null()) return def;
  if (!j[key].is_boolean()) return def;
  return j[key].get<bool>();
}

bool tokenizer_json_is_sentencepiece_style(const json& j) {
  const json& model = j.value("model", json::object());
  if (model.is_object() && flag(model, "byte_fallback", false)) return true;
  const std::string dump = j.value("pre_tokenizer", json()).dump() + j.value("normalizer", json()).dump() +
                           j.value("decoder", json()).dump();
  return dump.find("Metaspace") != std::string::npos || dump.find("\xE2\x96\x81") != std::string::npos ||
         dump.find("\\u2581") != std::string::npos;
}

// ---- reading ----

namespace {

bool byte_level_ok(const json& p, bool want_regex) {
  if (type_of(p) != "ByteLevel") return false;
  if (flag(p, "add_prefix_space", true)) return false;
  return flag(p, "use_regex", true) == want_regex;
}

PreTokenizer parse_pre_tokenizer(const json& p, const std::string& where) {
  auto unsupported = [&]() -> PreTokenizer {
    fail_file(where,
              "unsupported pre_tokenizer {}: toga reads ByteLevel(add_prefix_space=false), Digits(individual) + "
              "ByteLevel, and Split(Llama-3 or Qwen2 regex) + ByteLevel(use_regex=false)",
              p.dump().substr(0, 600));
  };
  const std::string t = type_of(p);
  if (t == "ByteLevel") return byte_level_ok(p, true) ? PreTokenizer::Gpt2 : unsupported();
  if (t != "Sequence" || !p.contains("pretokenizers") || !p["pretokenizers"].is_array()) return unsupported();
  const json& seq = p["pretokenizers"];
  if (seq.size() == 1) return parse_pre_tokenizer(seq[0], where);
  if (seq.size() != 2) return unsupported();
  const json& a = seq[0];
  const json& b = seq[1];
  if (type_of(a) == "Digits") {
    if (!flag(a, "individual_digits", false) || !byte_level_ok(b, true)) return unsupported();
    return PreTokenizer::SmolLM;
  }
  if (type_of(a) == "Split") {
    if (!byte_level_ok(b, false)) return unsupported();
    if (a.value("behavior", "") != "Isolated" || flag(a, "invert", false)) return unsupported();
    const json& pat = a.value("pattern", json::object());
    if (!pat.is_object() || !pat.contains("Regex") || !pat["Regex"].is_string()) return unsupported();
    const std::string re = pat["Regex"].get<std::string>();
    for (PreTokenizer k : {PreTokenizer::Llama3, PreTokenizer::Qwen2})
      if (re == pre_tokenizer_regex(k)) return k;
    fail_file(where, "unsupported Split regex in pre_tokenizer: {}", re);
  }
  return unsupported();
}

bool parse_normalizer(const json& n, const std::string& where) {
  if (n.is_null()) return false;
  const std::string t = type_of(n);
  if (t == "NFC") return true;
  if (t == "Sequence" && n.contains("normalizers") && n["normalizers"].is_array()) {
    bool nfc = false;
    for (const auto& x : n["normalizers"]) nfc = parse_normalizer(x, where) || nfc;
    if (n["normalizers"].size() <= 1) return nfc;
  }
  fail_file(where, "unsupported normalizer {}", n.dump().substr(0, 300));
}

std::string token_content(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return "";
}

// Leading / trailing special tokens of a TemplateProcessing "single" template.
void parse_post_processor(const json& pp, Tokenizer& tok, const std::string& where) {
  if (pp.is_null()) return;
  const std::string t = type_of(pp);
  if (t == "ByteLevel") return;
  if (t == "Sequence" && pp.contains("processors")) {
    for (const auto& p : pp["processors"]) parse_post_processor(p, tok, where);
    return;
  }
  if (t != "TemplateProcessing") fail_file(where, "unsupported post_processor type '{}'", t);
  const json& single = pp.value("single", json::array());
  const json& specials = pp.value("special_tokens", json::object());
  auto special_id = [&](const json& item) -> int {
    const std::string name = item["SpecialToken"].value("id", "");
    if (!specials.contains(name) || !specials[name].contains("ids") || specials[name]["ids"].size() != 1)
      fail_file(where, "post_processor special token '{}' is not a single id", name);
    return specials[name]["ids"][0].get<int>();
  };
  size_t seq_at = single.size();
  for (size_t i = 0; i < single.size(); ++i)
    if (single[i].contains("Sequence")) seq_at = i;
  if (seq_at == single.size()) fail_file(where, "post_processor template has no sequence");
  if (seq_at > 1 || single.size() - seq_at > 2)
    fail_file(where, "post_processor template {} adds more than one token on a side", single.dump());
  if (seq_at == 1) {
    tok.add_bos = true;
    tok.bos_id = special_id(single[0]);
  }
  if (single.size() - seq_at == 2) {
    tok.add_eos = true;
    tok.eos_id = special_id(single[seq_at + 1]);
  }
}

}  // namespace

static std::unique_ptr<BPETokenizer> bpe_from_hf_json(const std::string& path);

std::unique_ptr<BPETokenizer> BPETokenizer::from_hf_json(const std::string& path) {
  try {
    return bpe_from_hf_json(path);
  } catch (const json::exception& e) {  // a field of the wrong JSON type
    fail_file(path, "unexpected tokenizer.json content: {}", e.what());
  }
}

static std::unique_ptr<BPETokenizer> bpe_from_hf_json(const std::string& path) {
  const json j = parse_json_file(path);
  if (!j.is_object() || !j.contains("model")) fail_file(path, "not a tokenizer.json (no \"model\")");
  const json& model = j["model"];
  if (type_of(model) != "BPE") fail_file(path, "model type '{}' is not supported (only BPE)", type_of(model));
  if (tokenizer_json_is_sentencepiece_style(j))
    fail_file(path, "a SentencePiece-style tokenizer.json (byte fallback / Metaspace): load its tokenizer.model");
  if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"].get<double>() != 0.0)
    fail_file(path, "BPE dropout is not supported");
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (model.contains(k) && !model[k].is_null() && model[k] != "") fail_file(path, "BPE {} is not supported", k);

  BPEConfig c;
  c.pre = parse_pre_tokenizer(j.value("pre_tokenizer", json()), path);
  c.nfc = parse_normalizer(j.value("normalizer", json()), path);
  c.ignore_merges = flag(model, "ignore_merges", false);
  const json& dec = j.value("decoder", json());
  if (type_of(dec) != "ByteLevel") fail_file(path, "unsupported decoder {} (expected ByteLevel)", dec.dump().substr(0, 200));

  std::map<int, std::string> by_id;
  if (!model.contains("vocab") || !model["vocab"].is_object()) fail_file(path, "model has no vocab object");
  for (const auto& [tok, id] : model["vocab"].items()) {
    if (!id.is_number_integer()) fail_file(path, "vocab entry '{}' has a non-integer id", tok);
    if (!by_id.emplace(id.get<int>(), tok).second) fail_file(path, "vocab id {} is used twice", id.get<int>());
  }
  const json& added = j.value("added_tokens", json::array());
  for (const auto& a : added) {
    const int id = a.at("id").get<int>();
    const std::string content = a.at("content").get<std::string>();
    const auto it = by_id.find(id);
    if (it != by_id.end() && it->second != content)
      fail_file(path, "added token {} '{}' differs from vocab entry '{}'", id, content, it->second);
    by_id[id] = content;
    AddedToken t;
    t.id = id;
    t.content = content;
    t.special = flag(a, "special", false);
    t.lstrip = flag(a, "lstrip", false);
    t.rstrip = flag(a, "rstrip", false);
    t.single_word = flag(a, "single_word", false);
    c.added.push_back(t);
  }
  if (by_id.empty() || by_id.begin()->first != 0 || by_id.rbegin()->first != static_cast<int>(by_id.size()) - 1)
    fail_file(path, "token ids are not contiguous from 0 ({} tokens, ids {}..{})", by_id.size(),
              by_id.empty() ? 0 : by_id.begin()->first, by_id.empty() ? 0 : by_id.rbegin()->first);
  c.tokens.reserve(by_id.size());
  for (auto& [id, tok] : by_id) c.tokens.push_back(std::move(tok));
  c.types.assign(c.tokens.size(), TokenType::Normal);
  for (const auto& a : c.added) c.types[a.id] = a.special ? TokenType::Control : TokenType::UserDefined;

  const json& merges = model.value("merges", json::array());
  c.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const json& m = merges[i];
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t sp = s.size() > 1 ? s.find(' ', 1) : std::string::npos;
      if (sp == std::string::npos) fail_file(path, "merge {} '{}' is not 'left right'", i, s);
      c.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      c.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      fail_file(path, "merge {} is neither 'left right' nor [left, right]", i);
    }
  }

  auto tok = std::make_unique<BPETokenizer>(std::move(c), path);
  if (model.contains("unk_token") && model["unk_token"].is_string())
    tok->unk_id = tok->piece_to_id(model["unk_token"].get<std::string>());
  parse_post_processor(j.value("post_processor", json()), *tok, path);
  apply_hf_tokenizer_config(*tok, fs::path(path).parent_path().string());
  return tok;
}

static void apply_hf_tokenizer_config_impl(Tokenizer& tok, const std::string& dir);

void apply_hf_tokenizer_config(Tokenizer& tok, const std::string& dir) {
  try {
    apply_hf_tokenizer_config_impl(tok, dir);
  } catch (const json::exception& e) {
    fail_file(dir, "unexpected tokenizer_config.json / config.json content: {}", e.what());
  }
}

static void apply_hf_tokenizer_config_impl(Tokenizer& tok, const std::string& dir) {
  const fs::path d = dir.empty() ? fs::path(".") : fs::path(dir);
  const fs::path cfg_path = d / "tokenizer_config.json";
  std::error_code ec;
  if (fs::exists(cfg_path, ec)) {
    const json cfg = parse_json_file(cfg_path.string());
    auto set_id = [&](const char* key, int& id) {
      if (!cfg.contains(key)) return;
      const std::string content = token_content(cfg[key]);
      if (content.empty()) return;
      const int found = tok.piece_to_id(content);
      if (found < 0) fail_file(cfg_path.string(), "{} '{}' is not in the vocabulary", key, content);
      id = found;
    };
    set_id("bos_token", tok.bos_id);
    set_id("eos_token", tok.eos_id);
    set_id("pad_token", tok.pad_id);
    set_id("unk_token", tok.unk_id);
    if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean()) tok.add_bos = cfg["add_bos_token"].get<bool>();
    if (cfg.contains("add_eos_token") && cfg["add_eos_token"].is_boolean()) tok.add_eos = cfg["add_eos_token"].get<bool>();
    if (cfg.contains("chat_template")) {
      const json& ct = cfg["chat_template"];
      if (ct.is_string()) {
        tok.chat_template = ct.get<std::string>();
      } else if (ct.is_array()) {  // named templates: the default one is the chat template
        for (const auto& e : ct)
          if (e.value("name", "") == "default") tok.chat_template = e.value("template", "");
      }
    }
  }
  const fs::path jinja = d / "chat_template.jinja";
  if (tok.chat_template.empty() && fs::exists(jinja, ec)) tok.chat_template = read_text_file(jinja.string());

  const fs::path model_cfg = d / "config.json";
  if ((tok.bos_id < 0 || tok.eos_id < 0) && fs::exists(model_cfg, ec)) {
    const json cfg = parse_json_file(model_cfg.string());
    auto first_id = [](const json& v) -> int {
      if (v.is_number_integer()) return v.get<int>();
      if (v.is_array() && !v.empty() && v[0].is_number_integer()) return v[0].get<int>();
      return -1;
    };
    if (tok.bos_id < 0 && cfg.contains("bos_token_id")) tok.bos_id = first_id(cfg["bos_token_id"]);
    if (tok.eos_id < 0 && cfg.contains("eos_token_id")) tok.eos_id = first_id(cfg["eos_token_id"]);
  }
  if (tok.add_bos && tok.bos_id < 0) fail_file(d.string(), "the tokenizer adds BOS but no BOS token is named");
  if (tok.add_eos && tok.eos_id < 0) fail_file(d.string(), "the tokenizer adds EOS but no EOS token is named");
}

// ---- writing ----

using ojson = nlohmann::ordered_json;

static ojson byte_level_json(bool use_regex) {
  return ojson{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", use_regex}};
}

ojson tokenizer_json(const BPETokenizer& tok) {
  const BPEConfig& c = tok.config();
  ojson j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;

  std::vector<AddedToken> added = c.added;
  std::sort(added.begin(), added.end(), [](const AddedToken& a, const AddedToken& b) { return a.id < b.id; });
  ojson added_json = ojson::array();
  for (const auto& a : added)
    added_json.push_back(ojson{{"id", a.id},
                               {"content", a.content},
                               {"single_word", a.single_word},
                               {"lstrip", a.lstrip},
                               {"rstrip", a.rstrip},
                               {"normalized", false},
                               {"special", a.special}});
  j["added_tokens"] = added_json;
  j["normalizer"] = c.nfc ? ojson{{"type", "NFC"}} : ojson(nullptr);

  switch (c.pre) {
    case PreTokenizer::Gpt2:
      j["pre_tokenizer"] = byte_level_json(true);
      break;
    case PreTokenizer::SmolLM:
      j["pre_tokenizer"] = ojson{
          {"type", "Sequence"},
          {"pretokenizers", ojson::array({ojson{{"type", "Digits"}, {"individual_digits", true}}, byte_level_json(true)})}};
      break;
    case PreTokenizer::Llama3:
    case PreTokenizer::Qwen2:
      j["pre_tokenizer"] =
          ojson{{"type", "Sequence"},
                {"pretokenizers", ojson::array({ojson{{"type", "Split"},
                                                      {"pattern", ojson{{"Regex", pre_tokenizer_regex(c.pre)}}},
                                                      {"behavior", "Isolated"},
                                                      {"invert", false}},
                                                byte_level_json(false)})}};
      break;
  }

  if (tok.add_bos || tok.add_eos) {
    ojson single = ojson::array(), pair = ojson::array(), specials = ojson::object();
    auto special = [&](int id, int type_id) {
      const std::string name = tok.id_to_piece(id);
      specials[name] = ojson{{"id", name}, {"ids", ojson::array({id})}, {"tokens", ojson::array({name})}};
      return ojson{{"SpecialToken", ojson{{"id", name}, {"type_id", type_id}}}};
    };
    auto seq = [](const char* id, int type_id) { return ojson{{"Sequence", ojson{{"id", id}, {"type_id", type_id}}}}; };
    if (tok.add_bos) single.push_back(special(tok.bos_id, 0));
    single.push_back(seq("A", 0));
    if (tok.add_eos) single.push_back(special(tok.eos_id, 0));
    if (tok.add_bos) pair.push_back(special(tok.bos_id, 0));
    pair.push_back(seq("A", 0));
    if (tok.add_eos) pair.push_back(special(tok.eos_id, 0));
    if (tok.add_bos) pair.push_back(special(tok.bos_id, 1));
    pair.push_back(seq("B", 1));
    if (tok.add_eos) pair.push_back(special(tok.eos_id, 1));
    j["post_processor"] =
        ojson{{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", specials}};
  } else {
    j["post_processor"] =
        ojson{{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
  }
  j["decoder"] = ojson{{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};

  // In id order. ordered_json looks keys up linearly, so entries are appended to its underlying
  // vector directly and duplicates found with a hash map.
  ojson vocab = ojson::object();
  auto& entries = vocab.get_ref<ojson::object_t&>();
  entries.reserve(static_cast<size_t>(tok.vocab_size()));
  std::unordered_map<std::string, int> seen;
  for (int id = 0; id < tok.vocab_size(); ++id) {
    const std::string& t = c.tokens[id];
    const auto [it, fresh] = seen.emplace(t, id);
    if (!fresh)
      fail_file(tok.source, "token '{}' appears twice (ids {} and {}): tokenizer.json cannot hold it", t, it->second,
                id);
    entries.emplace_back(t, id);
  }
  ojson merges = ojson::array();
  for (const auto& [a, b] : c.merges) merges.push_back(a + " " + b);
  j["model"] = ojson{{"type", "BPE"},
                     {"dropout", nullptr},
                     {"unk_token", tok.unk_id >= 0 && c.types[tok.unk_id] == TokenType::Normal
                                       ? ojson(c.tokens[tok.unk_id])
                                       : ojson(nullptr)},
                     {"continuing_subword_prefix", nullptr},
                     {"end_of_word_suffix", nullptr},
                     {"fuse_unk", false},
                     {"byte_fallback", false},
                     {"ignore_merges", c.ignore_merges},
                     {"vocab", vocab},
                     {"merges", merges}};
  return j;
}

ojson tokenizer_config_json(const Tokenizer& tok) {
  ojson j;
  auto name = [&](int id) { return id >= 0 ? ojson(tok.id_to_piece(id)) : ojson(nullptr); };
  j["add_bos_token"] = tok.add_bos;
  j["add_eos_token"] = tok.add_eos;
  ojson decoder = ojson::object();
  for (int id = 0; id < tok.vocab_size(); ++id) {
    if (!tok.is_control(id)) continue;
    decoder[std::to_string(id)] = ojson{{"content", tok.id_to_piece(id)}, {"lstrip", false},      {"normalized", false},
                                        {"rstrip", false},                {"single_word", false}, {"special", true}};
  }
  j["added_tokens_decoder"] = decoder;
  j["bos_token"] = name(tok.bos_id);
  j["eos_token"] = name(tok.eos_id);
  j["pad_token"] = name(tok.pad_id);
  j["unk_token"] = name(tok.unk_id);
  if (!tok.chat_template.empty()) j["chat_template"] = tok.chat_template;
  j["clean_up_tokenization_spaces"] = false;
  j["tokenizer_class"] = std::string(tok.kind()) == "bpe" ? "PreTrainedTokenizerFast" : "LlamaTokenizer";
  return j;
}

static std::string dump_json(const ojson& j, const std::string& path) {
  try {
    return j.dump(2) + "\n";
  } catch (const nlohmann::json::exception& e) {
    fail_file(path, "cannot write JSON (a token is not valid UTF-8?): {}", e.what());
  }
}

void write_tokenizer_json(const Tokenizer& tok, const std::string& path) {
  const auto* bpe = dynamic_cast<const BPETokenizer*>(&tok);
  if (!bpe)
    fail_file(path, "only byte-level BPE tokenizers can be written as tokenizer.json (this one is '{}' from {})",
              tok.kind(), tok.source);
  write_text_atomically(path, dump_json(tokenizer_json(*bpe), path));
}

void write_tokenizer_config_json(const Tokenizer& tok, const std::string& path) {
  write_text_atomically(path, dump_json(tokenizer_config_json(tok), path));
}

}  // namespace toga

#include "tokenizer/bpe.h"
#include "tokenizer/sentencepiece_model.h"
#include "tokenizer/spm.h"

namespace toga {

std::map<std::string, std::string> hf_tokenizer_files(const Tokenizer& tok) {
  std::map<std::string, std::string> files;
  if (const auto* bpe = dynamic_cast<const BPETokenizer*>(&tok)) {
    files["tokenizer.json"] = tokenizer_json(*bpe).dump(2) + "\n";
  } else if (const auto* spm = dynamic_cast<const SPMTokenizer*>(&tok)) {
    files["tokenizer.model"] = sentencepiece_model_proto(*spm);
  } else {
    fail_file(tok.source, "cannot export a '{}' tokenizer into a checkpoint directory", tok.kind());
  }
  files["tokenizer_config.json"] = tokenizer_config_json(tok).dump(2) + "\n";
  return files;
}

}  // namespace toga
