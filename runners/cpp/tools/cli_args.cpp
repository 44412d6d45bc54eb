#include "cli_args.h"

#include <CLI/CLI.hpp>

#include <fstream>
#include <sstream>
#include <stdexcept>

namespace {

// "0,1k,16k" -> {0, 1024, 16384} (k = 1024), as seqedge bench spells contexts
std::vector<std::int64_t> parse_contexts(const std::string& spec) {
  std::vector<std::int64_t> out;
  std::stringstream in(spec);
  std::string part;
  while (std::getline(in, part, ',')) {
    std::int64_t scale = 1;
    if (!part.empty() && (part.back() == 'k' || part.back() == 'K')) {
      scale = 1024;
      part.pop_back();
    }
    std::size_t used = 0;
    long long value = -1;
    try {
      value = std::stoll(part, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != part.size() || value < 0) {
      throw CLI::ValidationError("--contexts", "'" + spec + "' is not a list of lengths like 0,1k,16k");
    }
    out.push_back(value * scale);
  }
  if (out.empty()) throw CLI::ValidationError("--contexts", "needs at least one length");
  return out;
}

}  // namespace

CliOptions parse_cli(int argc, char** argv) {
  CliOptions o;
  CLI::App app{"Run a seqedge artifact's ExecuTorch program natively: stream a completion of -p PROMPT, "
               "benchmark it (--bench) or dump its logits for a token list (--dump-logits)."};
  app.name("seqedge-run");
  std::string seed, contexts = "0,1k,16k";
  app.add_option("artifact", o.artifact, "artifact directory written by `seqedge export --target executorch`")
      ->required();
  app.add_option("-q,--quantization", o.quantization, "variant: fp32, int8, int4, ... (default: fp32, or the only)");
  auto* prompt = app.add_option("-p,--prompt", o.prompt, "text to continue (encoded as BOS + its UTF-8 bytes)");
  app.add_option("-n,--max-new-tokens", o.max_new_tokens, "tokens to generate (default: 200)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--temperature", o.temperature, "0 for greedy (default: 0.8)")->check(CLI::NonNegativeNumber);
  app.add_option("--top-k", o.top_k, "sample from the k most likely tokens (0: off)")->check(CLI::NonNegativeNumber);
  app.add_option("--top-p", o.top_p, "nucleus sampling mass (1.0: off)")->check(CLI::Range(0.0, 1.0));
  app.add_option("--seed", seed, "random seed, for repeatable sampling (default: random)");
  app.add_flag("--verbose", o.verbose, "show ExecuTorch's own info lines on stderr");
  app.add_flag("--no-huge-pages", o.no_huge_pages, "leave the loaded model's memory on the kernel's default pages "
                                                  "(default: its written memory is advised onto 2 MiB pages, which "
                                                  "a large model's step streams faster)");
  app.add_option("--threads", o.threads, "1: run on this thread; ExecuTorch's pool size (one per performant "
                                         "core): run on its pool; 0: 1 for models below 16M parameters, else the "
                                         "pool (default: 0)")->check(CLI::NonNegativeNumber);
  app.add_option("--state-in", o.state_in, "start from this state file (from seqedge_state_save or State.save)");
  app.add_option("--state-out", o.state_out, "write the final state here (readable by State.load)");
  auto* dump = app.add_option("--dump-logits", o.dump_logits,
                              "write the logits of every token of --tokens to this file: raw float32 "
                              "little-endian, [n_tokens, vocab] row-major");
  auto* tokens = app.add_option("--tokens", o.tokens_file, "text file of whitespace-separated token ids");
  app.add_option("--prefill", o.prefill, "with --dump-logits: how many of --tokens go through prefill before "
                                         "the rest is stepped one at a time (default: all)");
  auto* bench = app.add_flag("--bench", o.bench, "measure per-token latency at --contexts, prefill tokens/s and "
                                                 "peak RSS (token stream: --tokens, else -p repeated)");
  app.add_flag("--json", o.json, "with --bench: print the result as JSON");
  app.add_option("--contexts", contexts, "with --bench: context lengths reached by prefill (default: 0,1k,16k)");
  app.add_option("--steps", o.steps, "with --bench: timed steps per context (default: 100)")->check(CLI::PositiveNumber);
  app.add_option("--warmup", o.warmup, "with --bench: untimed steps first (default: 5)")->check(CLI::NonNegativeNumber);
  app.add_option("--prefill-tokens", o.prefill_tokens, "with --bench: tokens timed through prefill (default: 2048)")
      ->check(CLI::PositiveNumber);
  app.add_option("--stepwise-tokens", o.stepwise_tokens,
                 "with --bench: tokens timed one step at a time (default: 256)")->check(CLI::PositiveNumber);
  app.add_option("--ttft-prompt", o.ttft_prompt, "with --bench: prompt length of time to first token (default: 128)")
      ->check(CLI::PositiveNumber);
  app.add_option("--sweeps", o.sweeps, "with --bench: passes over the contexts; each context reports the pass with "
                                       "the lowest p50 (default: 1)")->check(CLI::PositiveNumber);
  dump->needs(tokens);
  dump->excludes(bench);
  try {
    app.parse(argc, argv);
    o.prompt_given = prompt->count() > 0;
    if (!seed.empty()) {
      std::size_t used = 0;
      unsigned long long value = 0;
      try {
        value = std::stoull(seed, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != seed.size() || seed[0] == '-') {
        throw CLI::ValidationError("--seed", "must be a non-negative integer, got '" + seed + "'");
      }
      o.seed = value;
    }
    o.contexts = parse_contexts(contexts);
    if (o.dump_logits.empty() && !o.bench && !o.prompt_given) {
      throw CLI::RequiredError("-p,--prompt (or --bench, or --dump-logits with --tokens)");
    }
    if (o.top_p <= 0) throw CLI::ValidationError("--top-p", "must be in (0, 1]");
  } catch (const CLI::ParseError& err) {
    std::exit(app.exit(err) == 0 ? 0 : 2);
  }
  return o;
}

std::vector<std::int64_t> read_token_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read the token file " + path);
  std::vector<std::int64_t> ids;
  std::string word;
  while (in >> word) {
    std::size_t used = 0;
    long long value = 0;
    try {
      value = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != word.size()) {
      throw std::runtime_error(path + ": '" + word + "' is not an integer token id");
    }
    ids.push_back(value);
  }
  return ids;
}
