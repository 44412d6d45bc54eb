// The byte tokenizer of seqedge.tokenizer.ByteTokenizer: ids 0-255 are bytes; BOS, EOS, PAD come after.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "manifest.h"

namespace seqedge {

class ByteTokenizer {
 public:
  explicit ByteTokenizer(const ByteTokenizerInfo& info) : info_(info) {}
  std::vector<std::int64_t> encode(const std::string& text, bool add_bos) const;
  // the token's bytes ("" for specials); throws Error(TOKEN) outside [0, vocab_size)
  std::string token_bytes(std::int64_t token) const;
  const ByteTokenizerInfo& info() const { return info_; }

 private:
  ByteTokenizerInfo info_;
};

}  // namespace seqedge
