#include "tokenizer/sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>

#include "util/error.h"

namespace toga {

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_path)
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  source = model_path;
  const auto status = sp_->Load(model_path);
  if (!status.ok()) fail_file(model_path, "not a loadable SentencePiece model: {}", status.ToString());
  bos_id = sp_->bos_id();
  eos_id = sp_->eos_id();
  unk_id = sp_->unk_id();
  pad_id = sp_->pad_id();
  add_bos = bos_id >= 0;
  std::vector<AddedToken> control;
  for (int id = 0; id < sp_->GetPieceSize(); ++id)
    if (sp_->IsControl(id)) control.push_back({id, sp_->IdToPiece(id), true});
  control_ = AddedTokenMatcher(std::move(control));
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::vector<int> SentencePieceTokenizer::encode(const std::string& text, bool allow_special) const {
  std::vector<int> out;
  std::vector<int> part;
  for (const auto& seg : control_.split(text, allow_special)) {
    if (seg.id >= 0) {
      out.push_back(seg.id);
      continue;
    }
    const auto status = sp_->Encode(std::string_view(text).substr(seg.begin, seg.end - seg.begin), &part);
    if (!status.ok()) fail_file(source, "SentencePiece encode failed: {}", status.ToString());
    out.insert(out.end(), part.begin(), part.end());
  }
  return out;
}

std::string SentencePieceTokenizer::decode(const std::vector<int>& ids) const {
  for (int id : ids)
    if (id < 0 || id >= vocab_size()) fail("cannot decode token id {}: outside the vocabulary of {}", id, vocab_size());
  std::string out;
  const auto status = sp_->Decode(ids, &out);
  if (!status.ok()) fail_file(source, "SentencePiece decode failed: {}", status.ToString());
  return out;
}

int SentencePieceTokenizer::vocab_size() const { return sp_->GetPieceSize(); }

std::string SentencePieceTokenizer::id_to_piece(int id) const {
  if (id < 0 || id >= vocab_size()) fail("token id {} outside the vocabulary of {}", id, vocab_size());
  return sp_->IdToPiece(id);
}

int SentencePieceTokenizer::piece_to_id(const std::string& piece) const {
  const int id = sp_->PieceToId(piece);
  // SentencePiece answers unk_id for anything it does not know.
  if (id == sp_->unk_id() && piece != sp_->IdToPiece(id)) return -1;
  return id;
}

bool SentencePieceTokenizer::is_control(int id) const { return id >= 0 && id < vocab_size() && sp_->IsControl(id); }
float SentencePieceTokenizer::score(int id) const { return sp_->GetScore(id); }
bool SentencePieceTokenizer::is_byte(int id) const { return sp_->IsByte(id); }
bool SentencePieceTokenizer::is_unknown(int id) const { return sp_->IsUnknown(id); }
bool SentencePieceTokenizer::is_unused(int id) const { return sp_->IsUnused(id); }

}  // namespace toga
