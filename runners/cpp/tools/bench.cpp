// --bench: the measurements of seqedge bench (runtimes/latency.py), natively: per-token step latency after
// reaching each context by prefill (p50/p90/p99), prefill tokens/s, token-by-token tokens/s, time to first token
// and the process's peak RSS.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli_args.h"
#include "run_common.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Stats {
  double p50, p90, p99, mean, min;
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
  return {pct(0.5), pct(0.9), pct(0.99), sum / static_cast<double>(ms.size()), ms.front()};
}

std::int64_t proc_status_kib(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) return std::stoll(line.substr(std::string(key).size()));
  }
  return -1;
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

struct Sweep {
  std::string table;    // Markdown rows
  nlohmann::json rows;  // one object per context
};

// One pass over the contexts from a fresh state: prefill up to each, warm-up steps, timed steps.
Sweep context_sweep(Bench& b, const std::vector<std::int64_t>& contexts, const CliOptions& o) {
  std::ostringstream rows;
  Sweep out{"", nlohmann::json::array()};
  b.reset();
  std::size_t pos = 0;
  for (std::size_t i = 0; i < contexts.size(); ++i) {
    const std::size_t context = static_cast<std::size_t>(contexts[i]);
    const double reach_s = b.prefill(pos, context);
    pos = context;
    b.steps(pos, pos + static_cast<std::size_t>(o.warmup));
    pos += static_cast<std::size_t>(o.warmup);
    Stats s = stats(b.steps(pos, pos + static_cast<std::size_t>(o.steps)));
    pos += static_cast<std::size_t>(o.steps);
    char line[256];
    std::snprintf(line, sizeof line, "| %zu | %.4f | %.4f | %.4f | %.2f |\n", context, s.p50, s.p90, s.p99, reach_s);
    rows << line;
    out.rows.push_back({{"context", context}, {"p50_ms", s.p50}, {"p90_ms", s.p90}, {"p99_ms", s.p99},
                         {"mean_ms", s.mean}, {"min_ms", s.min}, {"reach_s", reach_s},
                         {"rss_bytes", proc_status_kib("VmRSS:") * 1024}});
  }
  out.table = rows.str();
  return out;
}

}  // namespace

void run_bench(seqedge_model* model, const CliOptions& o, double load_s) {
  seqedge_info info{};
  check(seqedge_get_info(model, &info));
  std::vector<std::int64_t> contexts(o.contexts);
  std::sort(contexts.begin(), contexts.end());
  contexts.erase(std::unique(contexts.begin(), contexts.end()), contexts.end());
  const std::size_t per_context = static_cast<std::size_t>(o.warmup + o.steps);
  for (std::size_t i = 1; i < contexts.size(); ++i) {
    if (static_cast<std::size_t>(contexts[i] - contexts[i - 1]) < per_context) {
      throw CliFailure(2, "contexts closer than --warmup + --steps tokens; space them further");
    }
  }
  const std::size_t need = std::max<std::size_t>(static_cast<std::size_t>(contexts.back()) + per_context,
                                                 static_cast<std::size_t>(o.prefill_tokens));
  Bench b{model, info.vocab_size, bench_stream(o, need), nullptr, {}};
  b.logits.resize(static_cast<std::size_t>(info.vocab_size));

  // time to first token, as seqedge bench measures it first: a fresh state, a 128-token prompt, the argmax
  b.reset();
  const auto ttft_start = Clock::now();
  b.prefill(0, std::min<std::size_t>(128, need));
  volatile auto first = std::max_element(b.logits.begin(), b.logits.end());
  (void)first;
  const double ttft_ms = std::chrono::duration<double, std::milli>(Clock::now() - ttft_start).count();
  b.reset();
  const double prefill_s = b.prefill(0, static_cast<std::size_t>(o.prefill_tokens));
  b.reset();
  std::vector<double> stepwise = b.steps(0, std::min<std::size_t>(256, need));
  double stepwise_total = 0;
  for (double v : stepwise) stepwise_total += v;

  const Sweep sweep = context_sweep(b, contexts, o);
  const long long peak = static_cast<long long>(proc_status_kib("VmHWM:")) * 1024;
  const double prefill_rate = static_cast<double>(o.prefill_tokens) / prefill_s;
  const double stepwise_rate = static_cast<double>(stepwise.size()) / (stepwise_total / 1e3);
  if (o.json) {
    nlohmann::json out = {{"runtime", "executorch-cpp"}, {"variant", info.variant}, {"load_s", load_s},
                          {"ttft_ms", ttft_ms}, {"contexts", sweep.rows}, {"prefill_tokens_per_s", prefill_rate},
                          {"prefill_tokens", o.prefill_tokens}, {"stepwise_tokens_per_s", stepwise_rate},
                          {"peak_rss_bytes", peak}, {"state_bytes", info.state_bytes}, {"steps", o.steps},
                          {"warmup", o.warmup}};
    std::printf("%s\n", out.dump().c_str());
    return;
  }
  std::printf("seqedge-run --bench: %s (load %.3f s)\n\n| context | p50 ms | p90 ms | p99 ms | reach s |\n"
              "|---|---|---|---|---|\n%s\nprefill: %.0f tokens/s (%lld tokens); token by token: %.0f tokens/s\n"
              "time to first token (128-token prompt): %.2f ms; peak RSS: %.1f MiB; state: %lld bytes\n",
              info.variant, load_s, sweep.table.c_str(), prefill_rate, static_cast<long long>(o.prefill_tokens),
              stepwise_rate, ttft_ms, static_cast<double>(peak) / (1 << 20),
              static_cast<long long>(info.state_bytes));
}
