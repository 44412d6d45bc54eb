#include "manifest.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "error.h"
#include "sha256.h"

namespace seqedge {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kFormat = "seqedge-artifact";
constexpr std::int64_t kFormatVersion = 1;
constexpr const char* kTarget = "executorch";
// ExecuTorch sizes are int32: no single tensor may have more elements than that.
constexpr std::int64_t kMaxNumel = (std::int64_t{1} << 31) - 1;

[[noreturn]] void fail(const std::string& message) { throw Error(SEQEDGE_ERR_ARTIFACT, message); }

std::int64_t positive_int(const json& object, const char* key, const std::string& where) {
  if (!object.is_object() || !object.contains(key) || !object[key].is_number_integer() ||
      object[key].get<std::int64_t>() < 1) {
    fail(where + ": field '" + key + "' must be a positive integer");
  }
  return object[key].get<std::int64_t>();
}

std::string string_field(const json& object, const char* key, const std::string& where) {
  if (!object.is_object() || !object.contains(key) || !object[key].is_string()) {
    fail(where + ": field '" + key + "' must be a string");
  }
  return object[key].get<std::string>();
}

json parse_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(SEQEDGE_ERR_IO, "cannot read " + path.string());
  try {
    return json::parse(in);
  } catch (const json::exception& err) {
    fail(path.string() + " is not valid JSON: " + err.what());
  }
}

// The tag Python's Variant.tag gives: "fp32" for scheme "none", else the scheme.
std::string variant_tag(const json& variant) {
  std::string scheme = "none";
  if (variant.contains("quantization") && variant["quantization"].is_object() &&
      variant["quantization"].contains("scheme") && variant["quantization"]["scheme"].is_string()) {
    scheme = variant["quantization"]["scheme"].get<std::string>();
  }
  return scheme == "none" ? "fp32" : scheme;
}

const json& select_variant(const json& data, const char* quantization, const std::string& where) {
  if (!data["variants"].is_array()) fail(where + ": 'variants' must be a list");
  std::vector<const json*> found;
  std::string tags;
  for (const json& v : data["variants"]) {
    if (v.is_object() && v.value("target", "") == kTarget) {
      found.push_back(&v);
      tags += (tags.empty() ? "" : ", ") + variant_tag(v);
    }
  }
  if (found.empty()) {
    fail(where + " has no executorch variant; export one with `seqedge export --target executorch`");
  }
  std::string want = quantization == nullptr ? "" : quantization;
  if (want == "none") want = "fp32";
  if (want.empty()) {
    for (const json* v : found)
      if (variant_tag(*v) == "fp32") return *v;
    if (found.size() == 1) return *found[0];
    fail(where + " has several executorch variants [" + tags + "]; choose one with --quantization");
  }
  for (const json* v : found)
    if (variant_tag(*v) == want) return *v;
  fail(where + " has no executorch/" + want + " variant (it has [" + tags + "])");
}

// The program's absolute path: relative in the manifest, and inside the artifact even after symlinks resolve.
std::string confined_path(const fs::path& root, const std::string& relative, const std::string& where) {
  fs::path rel(relative);
  if (relative.empty() || rel.is_absolute() || rel.has_root_name()) {
    fail(where + ": file path '" + relative + "' must be relative to the artifact directory");
  }
  for (const auto& part : rel)
    if (part == "..") fail(where + ": file path '" + relative + "' leaves the artifact directory");
  std::error_code ec;
  fs::path resolved = fs::weakly_canonical(root / rel, ec);
  if (ec) fail(where + ": cannot resolve '" + relative + "': " + ec.message());
  auto mismatch = std::mismatch(root.begin(), root.end(), resolved.begin(), resolved.end());
  if (mismatch.first != root.end()) {
    fail(where + ": file path '" + relative + "' resolves outside the artifact directory (" + resolved.string() + ")");
  }
  if (!fs::is_regular_file(resolved, ec)) {
    fail(resolved.string() + " is missing from the artifact; re-run `seqedge export`");
  }
  return resolved.string();
}

// A tokenizer this runner cannot encode with: kept so token ids still run (the tokenizer refuses text).
ByteTokenizerInfo foreign_tokenizer(const json& t, const std::string& type, std::int64_t vocab_size,
                                    const std::string& where) {
  ByteTokenizerInfo info;
  info.type = type;
  info.vocab_size = vocab_size;
  std::int64_t* ids[] = {&info.bos_id, &info.eos_id, &info.pad_id};
  const char* keys[] = {"bos_id", "eos_id", "pad_id"};
  for (int i = 0; i < 3; ++i) {
    *ids[i] = -1;
    if (!t.contains(keys[i]) || t[keys[i]].is_null()) continue;
    if (!t[keys[i]].is_number_integer() || t[keys[i]].get<std::int64_t>() < 0 ||
        t[keys[i]].get<std::int64_t>() >= vocab_size) {
      fail(where + " tokenizer: field '" + keys[i] + "' must be null or a token id in [0, vocab_size)");
    }
    *ids[i] = t[keys[i]].get<std::int64_t>();
  }
  return info;
}

ByteTokenizerInfo read_tokenizer(const json& data, std::int64_t vocab_size, const std::string& where) {
  ByteTokenizerInfo info;
  // an artifact without a tokenizer entry uses the byte tokenizer, as the Python sessions do
  if (data.contains("tokenizer")) {
    const json& t = data["tokenizer"];
    std::string type = string_field(t, "type", where + " tokenizer");
    if (type == "hf-tokenizers") return foreign_tokenizer(t, type, vocab_size, where);
    if (type != "bytes") {
      fail(where + ": tokenizer type '" + type + "' is not supported by this runner (it has the byte tokenizer)");
    }
    info.bos_id = positive_int(t, "bos_id", where + " tokenizer");
    info.eos_id = positive_int(t, "eos_id", where + " tokenizer");
    info.pad_id = positive_int(t, "pad_id", where + " tokenizer");
    info.vocab_size = positive_int(t, "vocab_size", where + " tokenizer");
  }
  for (std::int64_t id : {info.bos_id, info.eos_id, info.pad_id}) {
    if (id < 256 || id >= info.vocab_size) fail(where + ": tokenizer special id " + std::to_string(id) +
                                                " is not in [256, tokenizer vocab_size)");
  }
  // a byte tokenizer may cover fewer ids than the model has (an imported checkpoint without a tokenizer of its
  // own): the model's other ids still run, and decoding one is refused, as the Python tokenizer does
  if (info.vocab_size > vocab_size) {
    fail(where + ": the tokenizer's vocab_size " + std::to_string(info.vocab_size) + " exceeds the model's " +
         std::to_string(vocab_size));
  }
  return info;
}

}  // namespace

std::int64_t StateSpec::numel() const {
  std::int64_t n = 1;
  for (std::int64_t d : dims) n *= d;
  return n;
}

bool StateSpec::operator==(const StateSpec& o) const {
  return name == o.name && layer == o.layer && kind == o.kind && dims == o.dims && dtype == o.dtype;
}

std::vector<StateSpec> parse_specs(const json& specs, seqedge_status status, const std::string& where) {
  auto bad = [&](const std::string& what) -> Error { return Error(status, where + ": " + what); };
  if (!specs.is_array() || specs.empty()) throw bad("the state spec must be a non-empty list");
  std::vector<StateSpec> out;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const json& s = specs[i];
    std::string expected = "state." + std::to_string(i);
    if (!s.is_object() || !s.contains("name") || !s["name"].is_string() || s["name"] != expected) {
      throw bad("state spec " + std::to_string(i) + " must be named '" + expected + "'");
    }
    StateSpec spec;
    spec.name = expected;
    if (!s.contains("layer") || !s["layer"].is_number_integer()) throw bad(expected + ": 'layer' must be an integer");
    spec.layer = s["layer"].get<std::int64_t>();
    if (!s.contains("kind") || !s["kind"].is_string()) throw bad(expected + ": 'kind' must be a string");
    spec.kind = s["kind"].get<std::string>();
    spec.dtype = s.contains("dtype") && s["dtype"].is_string() ? s["dtype"].get<std::string>() : "float32";
    if (spec.dtype != "float32") throw bad(expected + ": dtype '" + spec.dtype + "' (the contract's states are float32)");
    const json& shape = s.contains("shape") ? s["shape"] : json();
    if (!shape.is_array() || shape.size() < 2 || shape[0] != "batch") {
      throw bad(expected + ": 'shape' must be a list starting with \"batch\"");
    }
    std::int64_t numel = 1;
    for (std::size_t d = 1; d < shape.size(); ++d) {
      if (!shape[d].is_number_integer() || shape[d].get<std::int64_t>() < 1) {
        throw bad(expected + ": shape entries after \"batch\" must be positive integers");
      }
      spec.dims.push_back(shape[d].get<std::int64_t>());
      numel *= spec.dims.back();
      if (numel > kMaxNumel) throw bad(expected + ": shape is implausibly large");
    }
    out.push_back(std::move(spec));
  }
  return out;
}

std::string specs_to_python_json(const std::vector<StateSpec>& specs) {
  // json.dumps' default separators (", " and ": ") and key order, so the metadata is byte-identical to Python's
  std::ostringstream out;
  out << "[";
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const StateSpec& s = specs[i];
    out << (i ? ", " : "") << "{\"name\": " << json(s.name).dump(-1, ' ', true) << ", \"layer\": " << s.layer
        << ", \"kind\": " << json(s.kind).dump(-1, ' ', true) << ", \"shape\": [\"batch\"";
    for (std::int64_t d : s.dims) out << ", " << d;
    out << "], \"dtype\": " << json(s.dtype).dump(-1, ' ', true) << "}";
  }
  out << "]";
  return out.str();
}

Manifest read_manifest(const std::string& dir, const char* quantization) {
  std::error_code ec;
  if (dir.empty() || !fs::is_directory(dir, ec)) fail("artifact directory '" + dir + "' does not exist");
  fs::path root = fs::canonical(dir, ec);
  if (ec) throw Error(SEQEDGE_ERR_IO, "cannot resolve " + dir + ": " + ec.message());
  fs::path path = root / "manifest.json";
  std::string where = path.string();
  if (!fs::is_regular_file(path, ec)) {
    fail(where + " is missing: " + dir + " is not a seqedge artifact (create one with `seqedge export`)");
  }
  json data = parse_file(path);
  if (!data.is_object() || data.value("format", "") != kFormat) fail(where + " is not a seqedge artifact manifest");
  if (!data.contains("format_version") || data["format_version"] != kFormatVersion) {
    fail(where + " has artifact format version " + (data.contains("format_version") ? data["format_version"].dump()
         : "null") + ", this runner reads version " + std::to_string(kFormatVersion) + "; re-export the artifact");
  }
  for (const char* key : {"model", "fingerprint", "state", "chunk_size", "variants"}) {
    if (!data.contains(key)) fail(where + " lacks field '" + key + "'");
  }
  Manifest m;
  m.root = root.string();
  m.fingerprint = string_field(data, "fingerprint", where);
  m.vocab_size = positive_int(data["model"], "vocab_size", where + " model");
  m.chunk_size = positive_int(data, "chunk_size", where);
  if (data["model"].contains("chunk_size") && data["model"]["chunk_size"] != m.chunk_size) {
    fail(where + ": chunk_size differs from the model config's chunk_size");
  }
  m.specs = parse_specs(data["state"], SEQEDGE_ERR_ARTIFACT, where + " state");
  m.tokenizer = read_tokenizer(data, m.vocab_size, where);
  if (data.contains("num_parameters") && data["num_parameters"].is_number_unsigned()) {
    m.num_parameters = data["num_parameters"].get<std::int64_t>();
  }

  const json& variant = select_variant(data, quantization, where);
  m.variant = std::string(kTarget) + "/" + variant_tag(variant);
  std::string vwhere = where + " variant " + m.variant;
  if (!variant.contains("files") || !variant["files"].is_object() || !variant["files"].contains("program")) {
    fail(vwhere + " has no 'program' file record");
  }
  const json& record = variant["files"]["program"];
  m.program_path = confined_path(root, string_field(record, "path", vwhere), vwhere);
  m.program_sha256 = string_field(record, "sha256", vwhere);
  if (record.contains("bytes") && record["bytes"].is_number_unsigned()) {
    m.program_bytes = record["bytes"].get<std::uint64_t>();
    m.has_program_bytes = true;
  }
  const json info = variant.contains("info") && variant["info"].is_object() ? variant["info"] : json::object();
  if (info.contains("chunk_size") && info["chunk_size"] != m.chunk_size) {
    fail(vwhere + ": the program's chunk_size differs from the manifest's");
  }
  if (info.contains("batch") && info["batch"].is_object()) m.max_batch = positive_int(info["batch"], "max", vwhere);
  return m;
}

void verify_program(const Manifest& m) {
  std::uint64_t n_bytes = 0;
  std::string digest = sha256_file(m.program_path, &n_bytes);
  if (digest != m.program_sha256 || (m.has_program_bytes && n_bytes != m.program_bytes)) {
    fail(m.program_path + " does not match the sha256 in manifest.json (truncated or modified); re-run "
         "`seqedge export`");
  }
}

}  // namespace seqedge
