// sha256 of a file, through OpenSSL's libcrypto (the maintained implementation a Debian system ships).
#pragma once

#include <cstdint>
#include <string>

namespace seqedge {

// Lowercase hex digest of the file's bytes; *n_bytes receives the file's size. Throws Error(IO) if unreadable.
std::string sha256_file(const std::string& path, std::uint64_t* n_bytes);

// Lowercase hex digest of a buffer.
std::string sha256_bytes(const void* data, std::size_t size);

}  // namespace seqedge
