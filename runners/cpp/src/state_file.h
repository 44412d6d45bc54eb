// The state file: safetensors (an 8-byte little-endian header length, a JSON header, raw tensor data) with the
// metadata Python's State.save writes: format, format_version, fingerprint and the specs as JSON; one float32
// tensor per spec, named by the spec, batch 1. Every layout detail of the contract lives in this file.
#pragma once

#include <string>
#include <vector>

#include "manifest.h"

namespace seqedge {

using StateTensors = std::vector<std::vector<float>>;  // one buffer per spec, [1, dims...] row-major

// Writes atomically (a temporary file in the same directory, then rename). Throws Error(IO).
void write_state_file(const std::string& path, const std::string& fingerprint, const std::vector<StateSpec>& specs,
                      const StateTensors& tensors);

// Reads a state of the model described by fingerprint/specs; extra metadata keys and extra tensors are ignored.
// Throws Error(IO) if unreadable, Error(STATE) for another format, model, spec or batch.
StateTensors read_state_file(const std::string& path, const std::string& fingerprint,
                             const std::vector<StateSpec>& specs);

}  // namespace seqedge
