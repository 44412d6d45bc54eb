#include "tokenizer.h"

#include "error.h"

namespace seqedge {

namespace {

void require_bytes(const ByteTokenizerInfo& info) {
  if (info.type != "bytes") {
    throw Error(SEQEDGE_ERR_ARGUMENT, "this artifact's tokenizer is type '" + info.type +
                                          "' (a Hugging Face tokenizer.json), which seqedge-run does not implement: "
                                          "pass token ids (--dump-logits FILE --tokens FILE) or run the artifact "
                                          "with Python (seqedge generate -m ARTIFACT --prompt ...)");
  }
}

}  // namespace

std::vector<std::int64_t> ByteTokenizer::encode(const std::string& text, bool add_bos) const {
  require_bytes(info_);
  std::vector<std::int64_t> ids;
  ids.reserve(text.size() + 1);
  if (add_bos) ids.push_back(info_.bos_id);
  for (unsigned char c : text) ids.push_back(c);
  return ids;
}

std::string ByteTokenizer::token_bytes(std::int64_t token) const {
  require_bytes(info_);
  if (token < 0 || token >= info_.vocab_size) {
    throw Error(SEQEDGE_ERR_TOKEN, "token id " + std::to_string(token) + " is outside the vocabulary [0, " +
                                       std::to_string(info_.vocab_size) + ")");
  }
  return token < 256 ? std::string(1, static_cast<char>(token)) : std::string();
}

}  // namespace seqedge
