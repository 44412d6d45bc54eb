// Shared by the seqedge-run tools: a failed C API call becomes an exception carrying its exit code.
#pragma once

#include <stdexcept>
#include <string>

#include "seqedge.h"

struct CliFailure : std::runtime_error {
  CliFailure(int code, const std::string& message) : std::runtime_error(message), exit_code(code) {}
  int exit_code;
};

// The CLI's exit codes: 2 usage (bad argument or token), 3 environment (I/O), 1 anything else.
inline void check(seqedge_status status) {
  if (status == SEQEDGE_OK) return;
  int code = status == SEQEDGE_ERR_ARGUMENT || status == SEQEDGE_ERR_TOKEN ? 2 : status == SEQEDGE_ERR_IO ? 3 : 1;
  throw CliFailure(code, std::string(seqedge_status_name(status)) + ": " + seqedge_last_error());
}

struct CliOptions;
struct HugePages;
// --bench: prints a table, or JSON with --json
void run_bench(seqedge_model* model, const CliOptions& options, double load_s, const HugePages& huge_pages);
