#include "state_file.h"

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>

#include "error.h"

namespace seqedge {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kFormat = "seqedge-state";
constexpr const char* kFormatVersion = "1";
constexpr std::uint64_t kMaxHeader = 100u << 20;  // safetensors' own limit on the header

static_assert(sizeof(float) == 4, "float32 state tensors");
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors stores little-endian data; this runner copies it as is"
#endif

[[noreturn]] void bad_state(const std::string& path, const std::string& what) {
  throw Error(SEQEDGE_ERR_STATE, path + " " + what);
}

std::string meta_string(const json& meta, const char* key, const std::string& path) {
  if (!meta.contains(key) || !meta[key].is_string()) bad_state(path, std::string("lacks the '") + key + "' metadata");
  return meta[key].get<std::string>();
}

void check_metadata(const json& header, const std::string& path, const std::string& fingerprint,
                    const std::vector<StateSpec>& specs) {
  const json meta = header.contains("__metadata__") ? header["__metadata__"] : json::object();
  if (!meta.is_object() || meta.value("format", "") != kFormat) bad_state(path, "is not a seqedge state file");
  std::string version = meta_string(meta, "format_version", path);
  if (version != kFormatVersion) {
    bad_state(path, "has state format " + version + ", this runner reads " + kFormatVersion +
                        "; re-create the state with a matching seqedge");
  }
  std::string theirs = meta_string(meta, "fingerprint", path);
  if (theirs != fingerprint) {
    bad_state(path, "belongs to another model (fingerprint " + theirs + ", expected " + fingerprint +
                        "); start from seqedge_init_state of this model");
  }
  json their_specs;
  try {
    their_specs = json::parse(meta_string(meta, "specs", path));
  } catch (const json::exception& err) {
    bad_state(path, std::string("has unreadable 'specs' metadata: ") + err.what());
  }
  if (parse_specs(their_specs, SEQEDGE_ERR_STATE, path + " specs") != specs) {
    bad_state(path, "has a state spec that differs from this model's manifest");
  }
}

}  // namespace

void write_state_file(const std::string& path, const std::string& fingerprint, const std::vector<StateSpec>& specs,
                      const StateTensors& tensors) {
  json header = json::object();
  header["__metadata__"] = {{"format", kFormat}, {"format_version", kFormatVersion}, {"fingerprint", fingerprint},
                            {"specs", specs_to_python_json(specs)}};
  std::uint64_t offset = 0;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    std::vector<std::int64_t> shape{1};
    shape.insert(shape.end(), specs[i].dims.begin(), specs[i].dims.end());
    std::uint64_t n = tensors[i].size() * sizeof(float);
    header[specs[i].name] = {{"dtype", "F32"}, {"shape", shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned, as safetensors writes it

  fs::path target(path);
  std::error_code ec;
  if (target.has_parent_path()) fs::create_directories(target.parent_path(), ec);
  std::string tmp_name = (target.has_parent_path() ? target.parent_path() / "" : fs::path()).string() + "." +
                         target.filename().string() + ".XXXXXX";
  std::vector<char> tmp(tmp_name.begin(), tmp_name.end());
  tmp.push_back('\0');
  int fd = mkstemp(tmp.data());
  if (fd < 0) throw Error(SEQEDGE_ERR_IO, "cannot create a temporary file next to " + path + ": " + std::strerror(errno));
  std::unique_ptr<FILE, int (*)(FILE*)> file(fdopen(fd, "wb"), &std::fclose);
  if (!file) {
    close(fd);
    std::remove(tmp.data());
    throw Error(SEQEDGE_ERR_IO, "cannot write " + path);
  }
  std::uint64_t n = text.size();
  unsigned char length[8];
  for (int b = 0; b < 8; ++b) length[b] = static_cast<unsigned char>(n >> (8 * b));
  bool ok = std::fwrite(length, 1, 8, file.get()) == 8 && std::fwrite(text.data(), 1, n, file.get()) == n;
  for (const auto& t : tensors) ok = ok && std::fwrite(t.data(), sizeof(float), t.size(), file.get()) == t.size();
  ok = (std::fclose(file.release()) == 0) && ok;
  if (!ok || std::rename(tmp.data(), path.c_str()) != 0) {
    std::remove(tmp.data());
    throw Error(SEQEDGE_ERR_IO, "cannot write the state to " + path + ": " + std::strerror(errno));
  }
}

StateTensors read_state_file(const std::string& path, const std::string& fingerprint,
                             const std::vector<StateSpec>& specs) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw Error(SEQEDGE_ERR_IO, "no readable state file at " + path);
  const std::uint64_t size = static_cast<std::uint64_t>(in.tellg());
  in.seekg(0);
  unsigned char length[8];
  if (size < 8 || !in.read(reinterpret_cast<char*>(length), 8)) bad_state(path, "is too short to be a state file");
  std::uint64_t n = 0;
  for (int b = 7; b >= 0; --b) n = (n << 8) | length[b];
  if (n > kMaxHeader || n > size - 8) bad_state(path, "has a corrupt safetensors header length");
  std::string text(n, '\0');
  if (!in.read(text.data(), static_cast<std::streamsize>(n))) throw Error(SEQEDGE_ERR_IO, "cannot read " + path);
  json header;
  try {
    header = json::parse(text);
  } catch (const json::exception& err) {
    bad_state(path, std::string("has a corrupt safetensors header: ") + err.what());
  }
  if (!header.is_object()) bad_state(path, "has a corrupt safetensors header");
  check_metadata(header, path, fingerprint, specs);

  const std::uint64_t data_start = 8 + n, data_len = size - data_start;
  StateTensors out;
  for (const StateSpec& spec : specs) {
    if (!header.contains(spec.name) || !header[spec.name].is_object()) bad_state(path, "lacks tensor " + spec.name);
    const json& entry = header[spec.name];
    std::vector<std::int64_t> want{1};
    want.insert(want.end(), spec.dims.begin(), spec.dims.end());
    if (entry.value("dtype", "") != "F32") bad_state(path, spec.name + " is not float32");
    const json& shape = entry.contains("shape") ? entry["shape"] : json();
    if (!shape.is_array() || shape.empty() || !shape[0].is_number_integer()) bad_state(path, spec.name + " has no shape");
    if (shape[0] != 1) {
      bad_state(path, "holds batch " + shape[0].dump() + "; this runner's states hold one sequence (batch 1)");
    }
    if (shape != json(want)) bad_state(path, spec.name + " has shape " + shape.dump() + ", expected " + json(want).dump());
    const json& offsets = entry.contains("data_offsets") ? entry["data_offsets"] : json();
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned()) {
      bad_state(path, spec.name + " has no data_offsets");
    }
    const std::uint64_t begin = offsets[0], end = offsets[1];
    const std::uint64_t nbytes = static_cast<std::uint64_t>(spec.numel()) * sizeof(float);
    if (begin > end || end > data_len || end - begin != nbytes) {
      bad_state(path, spec.name + "'s data lies outside the file or has the wrong size (truncated?)");
    }
    std::vector<float> tensor(static_cast<std::size_t>(spec.numel()));
    in.seekg(static_cast<std::streamoff>(data_start + begin));
    if (!in.read(reinterpret_cast<char*>(tensor.data()), static_cast<std::streamsize>(nbytes))) {
      throw Error(SEQEDGE_ERR_IO, "cannot read " + spec.name + " from " + path);
    }
    out.push_back(std::move(tensor));
  }
  return out;
}

}  // namespace seqedge
