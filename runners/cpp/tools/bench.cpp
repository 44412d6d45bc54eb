// --bench: the measurements of seqedge bench (runtimes/latency.py), natively: per-token step latency after
// reaching each context by prefill (p50/p90/p99), prefill tokens/s, token-by-token tokens/s, time to first token
// and peak RSS, with the same phases, streams and statistics, so that seqedge bench reads its --json output as one
// of its own rows (seqedge/evaluate/native_runner.py). Peak RSS is measured as seqedge bench measures it: the
// kernel's counter reset after the model is loaded; the process's own peak (loading included) is reported beside.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include "cli_args.h"
#include "huge_pages.h"
#include "run_common.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Stats {
  double p50, p90, p99, mean, min, iqr;
};

// numpy's default (linear) percentiles of per-call times in ms
Stats stats(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  auto pct = [&](double q) {
    const double pos = q * static_cast<double>(ms.size() - 1);
    const std::size_t lo = static_cast<std::size_t>(pos);
    const std::size_t hi = std::min(lo + 1, ms.size() - 1);
    return ms[lo] + (ms[hi] - ms[lo]) * (pos - static_cast<double>(lo));
  };
  double sum = 0;
  for (double v : ms) sum += v;
  return {pct(0.5), pct(0.9), pct(0.99), sum / static_cast<double>(ms.size()), ms.front(), pct(0.75) - pct(0.25)};
}

std::int64_t proc_status_kib(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) return std::stoll(line.substr(std::string(key).size()));
  }
  return -1;
}

// Resets the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0); false where impossible.
bool reset_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  return static_cast<bool>(out << "5" << std::flush);
}

// sha256 of the ids as int64 little-endian, so the caller can check the stream that was consumed
std::string ids_sha256(const std::vector<std::int64_t>& ids) {
  std::vector<unsigned char> bytes(ids.size() * 8);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const auto v = static_cast<std::uint64_t>(ids[i]);
    for (int b = 0; b < 8; ++b) bytes[i * 8 + b] = static_cast<unsigned char>(v >> (8 * b));
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(), nullptr) != 1) {
    throw CliFailure(1, "OpenSSL sha256 failed");
  }
  std::string hex;
  char two[3];
  for (unsigned int i = 0; i < length; ++i) {
    std::snprintf(two, sizeof two, "%02x", digest[i]);
    hex += two;
  }
  return hex;
}

struct Bench {
  seqedge_model* model;
  std::int64_t vocab;
  std::vector<std::int64_t> stream;
  seqedge_state* state = nullptr;
  std::vector<float> logits;

  ~Bench() { seqedge_state_free(state); }
  void reset() {
    seqedge_state_free(state);
    state = nullptr;
    check(seqedge_init_state(model, &state));
  }
  double prefill(std::size_t begin, std::size_t end) {  // seconds
    if (end <= begin) return 0;
    const auto t0 = Clock::now();
    check(seqedge_prefill(model, state, stream.data() + begin, end - begin, logits.data(), logits.size()));
    return std::chrono::duration<double>(Clock::now() - t0).count();
  }
  std::vector<double> steps(std::size_t begin, std::size_t end) {  // ms per step
    std::vector<double> out;
    for (std::size_t t = begin; t < end; ++t) {
      const auto t0 = Clock::now();
      check(seqedge_step(model, state, stream[t], logits.data(), logits.size()));
      out.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
    return out;
  }
};

// --tokens if given, else the prompt's bytes repeated, else seeded random bytes
std::vector<std::int64_t> bench_stream(const CliOptions& o, std::size_t need) {
  std::vector<std::int64_t> base;
  if (!o.tokens_file.empty()) {
    base = read_token_file(o.tokens_file);
  } else if (!o.prompt.empty()) {
    for (unsigned char c : o.prompt) base.push_back(c);
  } else {
    std::mt19937_64 rng(0);
    for (int i = 0; i < 4096; ++i) base.push_back(static_cast<std::int64_t>(rng() % 256));
  }
  if (base.empty()) throw CliFailure(2, "the benchmark's token stream is empty");
  std::vector<std::int64_t> out;
  while (out.size() < need) out.insert(out.end(), base.begin(), base.end());
  out.resize(need);
  return out;
}

// One pass over the contexts from a fresh state: prefill up to each, warm-up steps, timed steps.
nlohmann::json context_sweep(Bench& b, const std::vector<std::int64_t>& contexts, const CliOptions& o,
                             std::int64_t state_bytes) {
  nlohmann::json rows = nlohmann::json::array();
  b.reset();
  std::size_t pos = 0;
  for (std::int64_t c : contexts) {
    const std::size_t context = static_cast<std::size_t>(c);
    const std::size_t reach_tokens = context - pos;
    const double reach_s = b.prefill(pos, context);
    pos = context;
    b.steps(pos, pos + static_cast<std::size_t>(o.warmup));
    pos += static_cast<std::size_t>(o.warmup);
    const Stats s = stats(b.steps(pos, pos + static_cast<std::size_t>(o.steps)));
    pos += static_cast<std::size_t>(o.steps);
    rows.push_back({{"context", context}, {"p50_ms", s.p50}, {"p90_ms", s.p90}, {"p99_ms", s.p99},
                    {"mean_ms", s.mean}, {"min_ms", s.min}, {"iqr_ms", s.iqr}, {"reach_s", reach_s},
                    {"reach_tokens", reach_tokens}, {"memory_bytes", state_bytes},
                    {"rss_bytes", proc_status_kib("VmRSS:") * 1024}});
  }
  return rows;
}

// --sweeps passes; each context keeps the pass with the lowest p50 and lists every pass's p50 (as seqedge bench).
nlohmann::json best_of_sweeps(Bench& b, const std::vector<std::int64_t>& contexts, const CliOptions& o,
                              std::int64_t state_bytes) {
  std::vector<nlohmann::json> sweeps;
  for (std::int64_t i = 0; i < o.sweeps; ++i) sweeps.push_back(context_sweep(b, contexts, o, state_bytes));
  nlohmann::json best = nlohmann::json::array();
  for (std::size_t c = 0; c < contexts.size(); ++c) {
    nlohmann::json row = sweeps[0][c], p50s = nlohmann::json::array();
    for (const auto& sweep : sweeps) {
      p50s.push_back(sweep[c]["p50_ms"]);
      if (sweep[c]["p50_ms"].get<double>() < row["p50_ms"].get<double>()) row = sweep[c];
    }
    row["sweep_p50_ms"] = p50s;
    best.push_back(row);
  }
  return best;
}

std::vector<std::int64_t> checked_contexts(const CliOptions& o) {
  std::vector<std::int64_t> contexts(o.contexts);
  std::sort(contexts.begin(), contexts.end());
  contexts.erase(std::unique(contexts.begin(), contexts.end()), contexts.end());
  for (std::size_t i = 1; i < contexts.size(); ++i) {
    if (contexts[i] - contexts[i - 1] < o.warmup + o.steps) {
      throw CliFailure(2, "contexts closer than --warmup + --steps tokens; space them further");
    }
  }
  return contexts;
}

void print_table(const nlohmann::json& out) {
  std::printf("seqedge-run --bench: %s, %lld thread(s) (load %.3f s)\n\n| context | p50 ms | p90 ms | p99 ms | reach s |\n"
              "|---|---|---|---|---|\n", out["variant"].get<std::string>().c_str(), out["threads"].get<long long>(),
              out["load_s"].get<double>());
  for (const auto& row : out["contexts"]) {
    std::printf("| %zu | %.4f | %.4f | %.4f | %.2f |\n", row["context"].get<std::size_t>(),
                row["p50_ms"].get<double>(), row["p90_ms"].get<double>(), row["p99_ms"].get<double>(),
                row["reach_s"].get<double>());
  }
  std::printf("\nprefill: %.0f tokens/s (%lld tokens); token by token: %.0f tokens/s\n"
              "time to first token (%lld-token prompt): %.2f ms; peak RSS: %.1f MiB (loading included: %.1f MiB); "
              "state: %lld bytes\n", out["prefill_tokens_per_s"].get<double>(),
              out["prefill_tokens"].get<long long>(), out["stepwise_tokens_per_s"].get<double>(),
              out["ttft_prompt"].get<long long>(), out["ttft_ms"].get<double>(),
              out["peak_rss_bytes"].get<double>() / (1 << 20), out["process_peak_rss_bytes"].get<double>() / (1 << 20),
              out["state_bytes"].get<long long>());
  const auto& pages = out["huge_pages"];
  if (pages["reason"].is_null()) {
    std::printf("2 MiB pages: %.0f MiB of the process (%.0f MiB advised at load)\n",
                pages["huge_bytes"].get<double>() / (1 << 20), pages["advised_bytes"].get<double>() / (1 << 20));
  } else {
    std::printf("2 MiB pages: off (%s)\n", pages["reason"].get<std::string>().c_str());
  }
}

}  // namespace

void run_bench(seqedge_model* model, const CliOptions& o, double load_s, const HugePages& huge_pages) {
  seqedge_info info{};
  check(seqedge_get_info(model, &info));
  const std::vector<std::int64_t> contexts = checked_contexts(o);
  const std::size_t need = static_cast<std::size_t>(std::max({contexts.back() + o.warmup + o.steps,
                                                              o.prefill_tokens, o.stepwise_tokens, o.ttft_prompt}));
  Bench b{model, info.vocab_size, bench_stream(o, need), nullptr, {}};
  b.logits.resize(static_cast<std::size_t>(info.vocab_size));
  const long long rss_before = static_cast<long long>(proc_status_kib("VmRSS:")) * 1024;
  const long long load_peak = static_cast<long long>(proc_status_kib("VmHWM:")) * 1024;
  const bool peak_reset = reset_peak_rss();

  // time to first token: a fresh state, the prompt through prefill, the argmax
  b.reset();
  const auto ttft_start = Clock::now();
  b.prefill(0, static_cast<std::size_t>(o.ttft_prompt));
  volatile auto first = std::max_element(b.logits.begin(), b.logits.end());
  (void)first;
  const double ttft_ms = std::chrono::duration<double, std::milli>(Clock::now() - ttft_start).count();
  b.reset();
  const double prefill_s = b.prefill(0, static_cast<std::size_t>(o.prefill_tokens));
  b.reset();
  std::vector<double> stepwise = b.steps(0, static_cast<std::size_t>(o.stepwise_tokens));
  double stepwise_total = 0;
  for (double v : stepwise) stepwise_total += v;

  nlohmann::json rows = best_of_sweeps(b, contexts, o, info.state_bytes);
  const long long peak = static_cast<long long>(proc_status_kib("VmHWM:")) * 1024;
  nlohmann::json out = {
      {"runtime", "executorch-cpp"}, {"variant", info.variant}, {"threads", info.threads}, {"load_s", load_s}, {"ttft_ms", ttft_ms},
      {"ttft_prompt", o.ttft_prompt}, {"contexts", rows},
      {"prefill_tokens_per_s", static_cast<double>(o.prefill_tokens) / prefill_s},
      {"prefill_tokens", o.prefill_tokens}, {"stepwise_tokens", o.stepwise_tokens},
      {"stepwise_tokens_per_s", static_cast<double>(stepwise.size()) / (stepwise_total / 1e3)},
      {"rss_before_bytes", rss_before}, {"peak_rss_bytes", peak}, {"peak_rss_reset", peak_reset},
      {"process_peak_rss_bytes", std::max(peak, load_peak)}, {"state_bytes", info.state_bytes},
      {"steps", o.steps}, {"warmup", o.warmup}, {"sweeps", o.sweeps}, {"stream_tokens", need},
      {"stream_sha256", ids_sha256(b.stream)},
      {"huge_pages", {{"advised_bytes", huge_pages.advised_bytes}, {"huge_bytes", huge_pages.huge_bytes},
                      {"reason", huge_pages.reason.empty() ? nlohmann::json() : nlohmann::json(huge_pages.reason)}}}};
  if (o.json) {
    std::printf("%s\n", out.dump().c_str());
  } else {
    print_table(out);
  }
}
