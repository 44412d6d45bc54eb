// seqedge-run: stream a completion, dump logits for a token list, or benchmark an artifact, through the C API.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
#include <vector>

#include "cli_args.h"
#include "huge_pages.h"
#include "run_common.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Model {
  seqedge_model* handle = nullptr;
  seqedge_info info{};
  ~Model() { seqedge_close(handle); }
};

struct StateHandle {
  seqedge_state* handle = nullptr;
  ~StateHandle() { seqedge_state_free(handle); }
};

void start_state(const Model& model, const CliOptions& o, StateHandle& state) {
  if (o.state_in.empty()) {
    check(seqedge_init_state(model.handle, &state.handle));
  } else {
    check(seqedge_state_load(model.handle, o.state_in.c_str(), &state.handle));
  }
}

void finish_state(const Model& model, const CliOptions& o, const StateHandle& state) {
  if (!o.state_out.empty()) check(seqedge_state_save(model.handle, state.handle, o.state_out.c_str()));
}

// Feeds the token file (prefill, then steps) and writes every token's logits.
void dump_logits(Model& model, const CliOptions& o) {
  std::vector<std::int64_t> ids;
  try {
    ids = read_token_file(o.tokens_file);
  } catch (const std::runtime_error& err) {
    throw CliFailure(2, err.what());
  }
  if (ids.empty()) throw CliFailure(2, o.tokens_file + " holds no token ids");
  const std::size_t n = ids.size(), vocab = static_cast<std::size_t>(model.info.vocab_size);
  const std::size_t n_prefill = o.prefill < 0 ? n : static_cast<std::size_t>(o.prefill);
  if (n_prefill > n) throw CliFailure(2, "--prefill " + std::to_string(o.prefill) + " exceeds the token count");
  StateHandle state;
  start_state(model, o, state);
  std::vector<float> logits(n * vocab);
  if (n_prefill > 0) {
    check(seqedge_prefill(model.handle, state.handle, ids.data(), n_prefill, logits.data(), n_prefill * vocab));
  }
  for (std::size_t t = n_prefill; t < n; ++t) {
    check(seqedge_step(model.handle, state.handle, ids[t], logits.data() + t * vocab, vocab));
  }
  std::ofstream out(o.dump_logits, std::ios::binary);
  if (!out.write(reinterpret_cast<const char*>(logits.data()), static_cast<std::streamsize>(logits.size() * 4))) {
    throw CliFailure(3, "cannot write " + o.dump_logits);
  }
  finish_state(model, o, state);
  std::fprintf(stderr, "[wrote logits [%zu, %zu] float32 to %s]\n", n, vocab, o.dump_logits.c_str());
}

// Streams the completion of the prompt: raw model bytes to stdout as each token is chosen, up to EOS.
void generate(Model& model, const CliOptions& o) {
  std::size_t n_ids = 0;
  check(seqedge_encode(model.handle, o.prompt.data(), o.prompt.size(), 1, nullptr, 0, &n_ids));
  std::vector<std::int64_t> ids(n_ids);
  check(seqedge_encode(model.handle, o.prompt.data(), o.prompt.size(), 1, ids.data(), ids.size(), &n_ids));
  struct Sampler {
    seqedge_sampler* handle = nullptr;
    ~Sampler() { seqedge_sampler_free(handle); }
  } sampler;
  const std::uint64_t seed = o.seed ? *o.seed : std::random_device{}();
  check(seqedge_sampler_new(o.temperature, o.top_k, o.top_p, seed, &sampler.handle));

  StateHandle state;
  start_state(model, o, state);
  std::vector<float> logits(static_cast<std::size_t>(model.info.vocab_size));
  std::fwrite(o.prompt.data(), 1, o.prompt.size(), stdout);
  std::fflush(stdout);
  const auto start = Clock::now();
  check(seqedge_prefill(model.handle, state.handle, ids.data(), ids.size(), logits.data(), logits.size()));
  std::int64_t count = 0;
  for (; count < o.max_new_tokens; ++count) {
    std::int64_t token = 0;
    check(seqedge_sample(sampler.handle, logits.data(), logits.size(), &token));
    char bytes[8];
    std::size_t n_bytes = 0;
    check(seqedge_token_bytes(model.handle, token, bytes, sizeof bytes, &n_bytes));
    std::fwrite(bytes, 1, n_bytes, stdout);
    std::fflush(stdout);
    if (token == model.info.eos_id) {
      ++count;
      break;
    }
    check(seqedge_step(model.handle, state.handle, token, logits.data(), logits.size()));
  }
  std::fputc('\n', stdout);
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  std::fprintf(stderr, "[%lld tokens, %.1f tokens/s]\n", static_cast<long long>(count),
               count / (elapsed > 1e-9 ? elapsed : 1e-9));
  finish_state(model, o, state);
}

}  // namespace

int main(int argc, char** argv) {
  CliOptions o = parse_cli(argc, argv);
  try {
    seqedge_set_runtime_logging(o.verbose ? 1 : 0);
    Model model;
    const auto t0 = Clock::now();
    check(seqedge_open_threads(o.artifact.c_str(), o.quantization.empty() ? nullptr : o.quantization.c_str(),
                               o.threads, &model.handle));
    check(seqedge_get_info(model.handle, &model.info));
    const HugePages huge_pages = advise_written_memory(!o.no_huge_pages);   // part of the load, as in Python
    const double load_s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!o.dump_logits.empty()) {
      dump_logits(model, o);
    } else if (o.bench) {
      run_bench(model.handle, o, load_s, huge_pages);
    } else {
      std::fprintf(stderr, "[seqedge-run: %s]\n", model.info.variant);
      generate(model, o);
    }
  } catch (const CliFailure& err) {
    std::fprintf(stderr, "seqedge-run: error: %s\n", err.what());
    return err.exit_code;
  } catch (const std::exception& err) {
    std::fprintf(stderr, "seqedge-run: error: %s\n", err.what());
    return 1;
  }
  return 0;
}
