#include "tokenizer/tokenizer.h"

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "io/gguf.h"
#include "tokenizer/bpe.h"
#include "tokenizer/hf_json.h"
#include "tokenizer/sentencepiece_model.h"
#include "tokenizer/spm.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace toga {

std::vector<int> Tokenizer::encode_for_model(const std::string& text, bool allow_special) const {
  std::vector<int> ids;
  if (add_bos) {
    if (bos_id < 0) fail_file(source, "the tokenizer adds BOS but has no BOS token");
    ids.push_back(bos_id);
  }
  const std::vector<int> body = encode(text, allow_special);
  ids.insert(ids.end(), body.begin(), body.end());
  if (add_eos) {
    if (eos_id < 0) fail_file(source, "the tokenizer adds EOS but has no EOS token");
    ids.push_back(eos_id);
  }
  return ids;
}

namespace {

std::string first_bytes(const std::string& path, size_t n) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_file(path, "cannot open for reading");
  std::string s(n, '\0');
  in.read(&s[0], static_cast<std::streamsize>(n));
  s.resize(static_cast<size_t>(in.gcount()));
  return s;
}

std::unique_ptr<Tokenizer> load_gguf_tokenizer(const std::string& path) {
  const GGUFFile f(path);
  if (!f.has("tokenizer.ggml.model")) fail_file(path, "this GGUF file has no tokenizer (no tokenizer.ggml.model)");
  const std::string model = f.get_string("tokenizer.ggml.model");
  if (model == "gpt2") return BPETokenizer::from_gguf(f);
  if (model == "llama") return SPMTokenizer::from_gguf(f);
  fail_file(path, "unsupported tokenizer.ggml.model '{}' (toga reads 'gpt2' byte-level BPE and 'llama' SentencePiece)",
            model);
}

// toga's own SPMTokenizer when it encodes this model exactly as libsentencepiece does (BPE with
// identity normalization: Llama-2, TinyLlama, Mistral); it is several times faster on long text.
// Other models (unigram, NFKC normalization, ...) are refused with the reason.
std::unique_ptr<Tokenizer> load_sentencepiece_model(const std::string& path) {
  std::unique_ptr<Tokenizer> tok;
  SentencePieceModelInfo info = read_sentencepiece_model(path);
  if (spm_incompatibility(info).empty()) {
    const int n = static_cast<int>(info.config.pieces.size());
    auto valid = [&](int id, TokenType type) {
      return id >= 0 && id < n && info.config.types[id] == type ? id : -1;
    };
    const int unk = valid(info.unk_id, TokenType::Unknown), bos = valid(info.bos_id, TokenType::Control),
              eos = valid(info.eos_id, TokenType::Control), pad = valid(info.pad_id, TokenType::Control);
    auto spm = std::make_unique<SPMTokenizer>(std::move(info.config), path);
    spm->unk_id = unk;
    spm->bos_id = bos;
    spm->eos_id = eos;
    spm->pad_id = pad;
    spm->add_bos = bos >= 0;
    tok = std::move(spm);
  } else {
    // libsentencepiece cannot be linked beside libtorch (both carry protobuf), so the product reads
    // only what toga's own encoder reproduces exactly; the library stays the tests' oracle.
    fail_file(path, "unsupported SentencePiece model: {} (toga reads BPE-type models with identity "
                    "normalization, as Llama 2, TinyLlama and Mistral use)", spm_incompatibility(info));
  }
  apply_hf_tokenizer_config(*tok, fs::path(path).parent_path().string());
  return tok;
}

std::unique_ptr<Tokenizer> load_tokenizer_json(const std::string& path) {
  const nlohmann::json j = [&] {
    try {
      return nlohmann::json::parse(read_text_file(path));
    } catch (const nlohmann::json::exception& e) {
      fail_file(path, "invalid JSON: {}", e.what());
    }
  }();
  if (tokenizer_json_is_sentencepiece_style(j)) {
    const fs::path model = fs::path(path).parent_path() / "tokenizer.model";
    std::error_code ec;
    if (fs::exists(model, ec)) return load_sentencepiece_model(model.string());
    fail_file(path, "a SentencePiece-style tokenizer.json (byte fallback / Metaspace) without a tokenizer.model "
                    "beside it is not supported");
  }
  return BPETokenizer::from_hf_json(path);
}

std::unique_ptr<Tokenizer> load_hf_dir(const std::string& dir) {
  const fs::path json = fs::path(dir) / "tokenizer.json";
  const fs::path model = fs::path(dir) / "tokenizer.model";
  std::error_code ec;
  if (fs::exists(json, ec)) return load_tokenizer_json(json.string());
  if (fs::exists(model, ec)) return load_sentencepiece_model(model.string());
  fail_file(dir, "no tokenizer found: neither tokenizer.json nor tokenizer.model is in this directory");
}

// Any file or directory that is itself a tokenizer (or holds one).
std::unique_ptr<Tokenizer> load_tokenizer_path(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) fail_file(path, "no such tokenizer file or directory");
  if (fs::is_directory(path, ec)) return load_hf_dir(path);
  const std::string head = first_bytes(path, 4);
  if (head == "GGUF") return load_gguf_tokenizer(path);
  const std::string ext = fs::path(path).extension().string();
  if (ext == ".json") return load_tokenizer_json(path);
  if (ext == ".model") return load_sentencepiece_model(path);
  if (ext == ".bin") return SPMTokenizer::from_llama2c(path);
  fail_file(path, "unrecognised tokenizer file (expected tokenizer.json, tokenizer.model, a llama2.c tokenizer.bin, a "
                  ".gguf file or an HF directory)");
}

// The vocabulary size in a llama2.c checkpoint header (int32 dim, hidden, layers, heads, kv_heads,
// vocab, seq_len; a negative vocab means an unshared classifier).
int llama2c_vocab_size(const std::string& path) {
  const std::string h = first_bytes(path, 28);
  if (h.size() < 28) fail_file(path, "too short for a llama2.c checkpoint header");
  int32_t vocab;
  std::memcpy(&vocab, h.data() + 20, 4);
  vocab = std::abs(vocab);
  if (vocab <= 0 || vocab > (1 << 24)) fail_file(path, "implausible vocabulary size {} in the llama2.c header", vocab);
  return vocab;
}

void check_vocab(const Tokenizer& tok, int expected, const std::string& model_path) {
  if (tok.vocab_size() != expected)
    fail_file(model_path, "the tokenizer {} has {} tokens but the model's vocabulary is {}", tok.source,
              tok.vocab_size(), expected);
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_path, const std::string& tokenizer_path) {
  std::error_code ec;
  const bool llama2c_model = !model_path.empty() && fs::is_regular_file(model_path, ec) &&
                             fs::path(model_path).extension() == ".bin" && first_bytes(model_path, 4) != "GGUF";
  if (!tokenizer_path.empty()) {
    auto tok = load_tokenizer_path(tokenizer_path);
    if (llama2c_model) check_vocab(*tok, llama2c_vocab_size(model_path), model_path);
    return tok;
  }
  if (model_path.empty()) fail("no model or tokenizer path given");
  if (!fs::exists(model_path, ec)) fail_file(model_path, "no such file or directory");
  if (fs::is_directory(model_path, ec)) return load_hf_dir(model_path);
  if (first_bytes(model_path, 4) == "GGUF") return load_gguf_tokenizer(model_path);
  const std::string ext = fs::path(model_path).extension().string();
  if (ext == ".safetensors" || ext == ".json") return load_hf_dir(fs::path(model_path).parent_path().string());
  if (llama2c_model) {
    const int vocab = llama2c_vocab_size(model_path);
    const fs::path dir = fs::path(model_path).parent_path();
    std::string looked;
    for (const std::string& name : {"tok" + std::to_string(vocab) + ".bin", std::string("tokenizer.bin")}) {
      const fs::path p = dir / name;
      looked += (looked.empty() ? "" : ", ") + p.string();
      if (!fs::exists(p, ec)) continue;
      auto tok = SPMTokenizer::from_llama2c(p.string());
      if (tok->vocab_size() == vocab) return tok;
    }
    fail_file(model_path,
              "no tokenizer with the model's {} tokens found beside this llama2.c checkpoint (looked for {}); pass "
              "the tokenizer path explicitly",
              vocab, looked);
  }
  fail_file(model_path, "cannot tell where this model's tokenizer is (expected an HF directory, a .gguf file or a "
                        "llama2.c .bin)");
}

}  // namespace toga
