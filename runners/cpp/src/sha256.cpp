#include "sha256.h"

#include <openssl/evp.h>

#include <cstdio>
#include <memory>
#include <vector>

#include "error.h"

namespace seqedge {
namespace {

struct DigestContext {
  DigestContext() : ctx(EVP_MD_CTX_new()) {
    if (ctx == nullptr || EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) != 1) {
      EVP_MD_CTX_free(ctx);
      throw Error(SEQEDGE_ERR_INTERNAL, "OpenSSL could not initialise a sha256 digest");
    }
  }
  ~DigestContext() { EVP_MD_CTX_free(ctx); }
  DigestContext(const DigestContext&) = delete;
  DigestContext& operator=(const DigestContext&) = delete;

  void update(const void* data, std::size_t size) {
    if (EVP_DigestUpdate(ctx, data, size) != 1) throw Error(SEQEDGE_ERR_INTERNAL, "OpenSSL sha256 update failed");
  }

  std::string hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    if (EVP_DigestFinal_ex(ctx, digest, &length) != 1) throw Error(SEQEDGE_ERR_INTERNAL, "OpenSSL sha256 failed");
    static const char* kHex = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < length; ++i) {
      out.push_back(kHex[digest[i] >> 4]);
      out.push_back(kHex[digest[i] & 15]);
    }
    return out;
  }

  EVP_MD_CTX* ctx;
};

}  // namespace

std::string sha256_file(const std::string& path, std::uint64_t* n_bytes) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) throw Error(SEQEDGE_ERR_IO, "cannot open " + path + " to check its sha256");
  DigestContext digest;
  std::vector<unsigned char> block(1 << 20);
  std::uint64_t total = 0;
  for (;;) {
    std::size_t got = std::fread(block.data(), 1, block.size(), file.get());
    if (got > 0) digest.update(block.data(), got);
    total += got;
    if (got < block.size()) break;
  }
  if (std::ferror(file.get())) throw Error(SEQEDGE_ERR_IO, "error while reading " + path);
  if (n_bytes != nullptr) *n_bytes = total;
  return digest.hex();
}

std::string sha256_bytes(const void* data, std::size_t size) {
  DigestContext digest;
  digest.update(data, size);
  return digest.hex();
}

}  // namespace seqedge
