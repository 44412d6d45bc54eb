// manifest.json of a seqedge artifact: the fields this runner needs, checked before anything is loaded.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "seqedge.h"

namespace seqedge {

// One state tensor of the manifest's "state" list; shape[0] is the symbolic batch ("batch" in the file).
struct StateSpec {
  std::string name;               // "state.<i>", the i-th state input of step/chunk
  std::int64_t layer = 0;
  std::string kind;               // "conv" tail or "scan" matrix (informational here)
  std::vector<std::int64_t> dims; // the shape without the batch dimension
  std::string dtype;              // "float32": the only state dtype of the contract

  std::int64_t numel() const;     // elements of one sequence's tensor
  bool operator==(const StateSpec& other) const;
};

struct ByteTokenizerInfo {
  std::int64_t bos_id = 256, eos_id = 257, pad_id = 258, vocab_size = 259;
  // "bytes", or "hf-tokenizers" (a Hugging Face tokenizer.json): token ids run, text in or out is refused;
  // its special ids are -1 where the model has none
  std::string type = "bytes";
};

struct Manifest {
  std::string root;               // the artifact directory, canonical
  std::string fingerprint;
  std::int64_t vocab_size = 0;
  std::int64_t chunk_size = 0;
  std::vector<StateSpec> specs;
  ByteTokenizerInfo tokenizer;
  // the chosen executorch variant
  std::string variant;            // "executorch/<tag>"
  std::string program_path;       // absolute, inside root
  std::string program_sha256;
  std::uint64_t program_bytes = 0;
  bool has_program_bytes = false;
  std::int64_t max_batch = 1;
  std::int64_t num_parameters = 0;  // the model's, as the export recorded it (0: not recorded)
};

// Reads and checks <dir>/manifest.json and selects the executorch variant at `quantization` (a tag: fp32/none,
// int8, ...; nullptr or "": fp32, else the only one). Throws Error(ARTIFACT) naming what is wrong.
Manifest read_manifest(const std::string& dir, const char* quantization);

// Checks the variant's program against the manifest's sha256 (and byte count); throws Error(ARTIFACT).
void verify_program(const Manifest& manifest);

// The specs as Python's json.dumps([spec.to_dict(), ...]) writes them (the state file's "specs" metadata).
std::string specs_to_python_json(const std::vector<StateSpec>& specs);

// Parses a state spec list (the manifest's "state" or a state file's "specs"); throws Error(`status`) naming
// `where` on anything malformed.
std::vector<StateSpec> parse_specs(const nlohmann::json& specs, seqedge_status status, const std::string& where);

}  // namespace seqedge
