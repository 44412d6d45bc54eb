// Command-line options of seqedge-run (parsed with CLI11).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

struct CliOptions {
  std::string artifact;
  std::string quantization;     // "" = fp32, or the only executorch variant
  std::string prompt;
  bool prompt_given = false;
  std::int64_t max_new_tokens = 200;
  double temperature = 0.8;
  std::int64_t top_k = 0;
  double top_p = 1.0;
  std::optional<std::uint64_t> seed;
  std::string state_in, state_out;
  bool verbose = false;         // ExecuTorch's info lines on stderr
  bool no_huge_pages = false;   // leave the loaded model's memory on 4 KiB pages (tools/huge_pages.h)
  int threads = 0;              // 0: chosen by the model's size (seqedge_open_threads)
  // --dump-logits: feed --tokens (the first --prefill of them through seqedge_prefill, the rest as steps)
  std::string dump_logits, tokens_file;
  std::int64_t prefill = -1;    // -1: all of them through prefill
  // --bench
  bool bench = false, json = false;
  std::vector<std::int64_t> contexts{0, 1024, 16384};
  std::int64_t steps = 100, warmup = 5, prefill_tokens = 2048;
  std::int64_t stepwise_tokens = 256, ttft_prompt = 128, sweeps = 1;
};

// Parses argv; on --help or a usage error prints and exits (0 or 2), as CLI11 does.
CliOptions parse_cli(int argc, char** argv);

// Whitespace-separated token ids from a text file; throws std::runtime_error naming the file.
std::vector<std::int64_t> read_token_file(const std::string& path);
