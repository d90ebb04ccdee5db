#include "tokenizer/sentencepiece_model.h"

#include <cstring>

#include "data/text.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace toga {

namespace {

// Field numbers of sentencepiece_model.proto.
enum : int {
  kModelPieces = 1, kModelTrainerSpec = 2, kModelNormalizerSpec = 3,
  kPiecePiece = 1, kPieceScore = 2, kPieceType = 3,
  kTrainerModelType = 3, kTrainerVocabSize = 4, kTrainerTreatWsAsSuffix = 24, kTrainerByteFallback = 35,
  kTrainerUnkId = 40, kTrainerBosId = 41, kTrainerEosId = 42, kTrainerPadId = 43,
  kTrainerUnkPiece = 45, kTrainerBosPiece = 46, kTrainerEosPiece = 47, kTrainerPadPiece = 48,
  kNormName = 1, kNormCharsmap = 2, kNormAddDummyPrefix = 3, kNormRemoveExtraWs = 4, kNormEscapeWs = 5,
};

struct Reader {
  const std::string& where;
  const uint8_t* p;
  const uint8_t* end;

  bool done() const { return p >= end; }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p >= end) fail_file(where, "truncated protobuf varint");
      const uint8_t b = *p++;
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    fail_file(where, "malformed protobuf varint");
  }
  // Returns the field number; sets the payload of the field (varint value or byte range).
  int field(int& wire, uint64_t& value, const uint8_t*& data, size_t& len) {
    const uint64_t key = varint();
    wire = static_cast<int>(key & 7);
    switch (wire) {
      case 0: value = varint(); break;
      case 1: need(8); data = p; len = 8; p += 8; break;
      case 5: need(4); data = p; len = 4; p += 4; break;
      case 2: {
        const uint64_t n = varint();
        if (n > static_cast<uint64_t>(end - p)) fail_file(where, "protobuf field longer than the file");
        data = p;
        len = static_cast<size_t>(n);
        p += n;
        break;
      }
      default: fail_file(where, "unsupported protobuf wire type {}", wire);
    }
    return static_cast<int>(key >> 3);
  }
  void need(size_t n) {
    if (static_cast<size_t>(end - p) < n) fail_file(where, "truncated protobuf field");
  }
};

float as_float(const uint8_t* d) {
  float f;
  std::memcpy(&f, d, 4);
  return f;
}

}  // namespace

SentencePieceModelInfo read_sentencepiece_model(const std::string& path) {
  const std::string data = read_text(path);
  SentencePieceModelInfo info;
  Reader top{path, reinterpret_cast<const uint8_t*>(data.data()), reinterpret_cast<const uint8_t*>(data.data()) + data.size()};
  int wire;
  uint64_t v = 0;
  const uint8_t* d = nullptr;
  size_t len = 0;
  while (!top.done()) {
    const int f = top.field(wire, v, d, len);
    if (wire != 2) continue;
    Reader sub{path, d, d + len};
    if (f == kModelPieces) {
      std::string piece;
      float score = 0;
      int type = 1;
      while (!sub.done()) {
        const int g = sub.field(wire, v, d, len);
        if (g == kPiecePiece && wire == 2) piece.assign(reinterpret_cast<const char*>(d), len);
        if (g == kPieceScore && wire == 5) score = as_float(d);
        if (g == kPieceType && wire == 0) type = static_cast<int>(v);
      }
      info.config.pieces.push_back(piece);
      info.config.scores.push_back(score);
      info.config.types.push_back(static_cast<TokenType>(type >= 1 && type <= 6 ? type : 1));
    } else if (f == kModelTrainerSpec) {
      while (!sub.done()) {
        const int g = sub.field(wire, v, d, len);
        if (wire != 0) continue;
        const int iv = static_cast<int>(static_cast<int32_t>(v));  // int32 fields: -1 is sign-extended
        if (g == kTrainerModelType) info.model_type = iv;
        if (g == kTrainerTreatWsAsSuffix) info.treat_whitespace_as_suffix = v != 0;
        if (g == kTrainerByteFallback) info.byte_fallback = v != 0;
        if (g == kTrainerUnkId) info.unk_id = iv;
        if (g == kTrainerBosId) info.bos_id = iv;
        if (g == kTrainerEosId) info.eos_id = iv;
        if (g == kTrainerPadId) info.pad_id = iv;
      }
    } else if (f == kModelNormalizerSpec) {
      while (!sub.done()) {
        const int g = sub.field(wire, v, d, len);
        if (g == kNormName && wire == 2) info.normalizer_name.assign(reinterpret_cast<const char*>(d), len);
        if (g == kNormCharsmap && wire == 2) info.has_charsmap = len > 0;
        if (g == kNormAddDummyPrefix && wire == 0) info.config.add_dummy_prefix = v != 0;
        if (g == kNormRemoveExtraWs && wire == 0) info.remove_extra_whitespaces = v != 0;
        if (g == kNormEscapeWs && wire == 0) info.escape_whitespaces = v != 0;
      }
    }
  }
  if (info.config.pieces.empty()) fail_file(path, "not a SentencePiece model (no pieces)");
  return info;
}

std::string spm_incompatibility(const SentencePieceModelInfo& info) {
  if (info.model_type != 2) return fmt::format("model type {} is not BPE", info.model_type);
  if (info.has_charsmap || (info.normalizer_name != "identity" && !info.normalizer_name.empty()))
    return fmt::format("normalizer '{}' rewrites the text", info.normalizer_name);
  if (info.remove_extra_whitespaces) return "remove_extra_whitespaces";
  if (!info.escape_whitespaces) return "escape_whitespaces is off";
  if (info.treat_whitespace_as_suffix) return "treat_whitespace_as_suffix";
  return "";
}

// ---- writing ----

namespace {

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7F) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}
void put_key(std::string& out, int field, int wire) { put_varint(out, (static_cast<uint64_t>(field) << 3) | wire); }
void put_int(std::string& out, int field, int64_t v) {
  put_key(out, field, 0);
  put_varint(out, static_cast<uint64_t>(v));
}
void put_bytes(std::string& out, int field, const std::string& b) {
  put_key(out, field, 2);
  put_varint(out, b.size());
  out += b;
}
void put_float(std::string& out, int field, float f) {
  put_key(out, field, 5);
  char b[4];
  std::memcpy(b, &f, 4);
  out.append(b, 4);
}

}  // namespace

std::string sentencepiece_model_proto(const SPMTokenizer& tok) {
  const SPMConfig& c = tok.config();
  std::string out;
  bool has_bytes = false;
  for (int id = 0; id < tok.vocab_size(); ++id) {
    std::string piece;
    // The stored form escapes spaces as U+2581 (llama2.c files hold plain spaces).
    for (char ch : c.pieces[id]) piece += ch == ' ' ? std::string("\xE2\x96\x81") : std::string(1, ch);
    std::string msg;
    put_bytes(msg, kPiecePiece, piece);
    put_float(msg, kPieceScore, c.scores[id]);
    if (c.types[id] != TokenType::Normal) put_int(msg, kPieceType, static_cast<int>(c.types[id]));
    has_bytes = has_bytes || c.types[id] == TokenType::Byte;
    put_bytes(out, kModelPieces, msg);
  }
  std::string trainer;
  put_int(trainer, kTrainerModelType, 2);
  put_int(trainer, kTrainerVocabSize, tok.vocab_size());
  if (has_bytes) put_int(trainer, kTrainerByteFallback, 1);
  put_int(trainer, kTrainerUnkId, tok.unk_id);
  put_int(trainer, kTrainerBosId, tok.bos_id);
  put_int(trainer, kTrainerEosId, tok.eos_id);
  put_int(trainer, kTrainerPadId, tok.pad_id);
  // libsentencepiece finds BOS/EOS/unk/pad by these names, whatever their ids.
  if (tok.unk_id >= 0) put_bytes(trainer, kTrainerUnkPiece, tok.id_to_piece(tok.unk_id));
  if (tok.bos_id >= 0) put_bytes(trainer, kTrainerBosPiece, tok.id_to_piece(tok.bos_id));
  if (tok.eos_id >= 0) put_bytes(trainer, kTrainerEosPiece, tok.id_to_piece(tok.eos_id));
  if (tok.pad_id >= 0) put_bytes(trainer, kTrainerPadPiece, tok.id_to_piece(tok.pad_id));
  put_bytes(out, kModelTrainerSpec, trainer);
  std::string norm;
  put_bytes(norm, kNormName, "identity");
  put_int(norm, kNormAddDummyPrefix, c.add_dummy_prefix ? 1 : 0);
  put_int(norm, kNormRemoveExtraWs, 0);
  put_int(norm, kNormEscapeWs, 1);
  put_bytes(out, kModelNormalizerSpec, norm);
  return out;
}

void write_sentencepiece_model(const SPMTokenizer& tok, const std::string& path) {
  write_text_atomically(path, sentencepiece_model_proto(tok));
}

}  // namespace toga
