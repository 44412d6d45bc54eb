#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "error.h"

namespace seqedge {

void SamplingConfig::validate() const {
  if (!(temperature >= 0) || !std::isfinite(temperature)) {
    throw Error(SEQEDGE_ERR_ARGUMENT, "temperature must be a finite number >= 0, got " + std::to_string(temperature));
  }
  if (top_k < 0) throw Error(SEQEDGE_ERR_ARGUMENT, "top_k must be >= 0, got " + std::to_string(top_k));
  if (!(top_p > 0 && top_p <= 1)) {
    throw Error(SEQEDGE_ERR_ARGUMENT, "top_p must be in (0, 1], got " + std::to_string(top_p));
  }
}

Sampler::Sampler(const SamplingConfig& config) : config_(config), rng_(config.seed) { config_.validate(); }

std::int64_t Sampler::operator()(const float* logits, std::size_t vocab) {
  if (logits == nullptr || vocab == 0) throw Error(SEQEDGE_ERR_ARGUMENT, "sampling needs a non-empty logits row");
  for (std::size_t i = 0; i < vocab; ++i) {
    if (!std::isfinite(logits[i])) {
      throw Error(SEQEDGE_ERR_ARGUMENT, "logit " + std::to_string(i) + " is not finite: the program's output is broken");
    }
  }
  if (config_.temperature == 0) {
    return static_cast<std::int64_t>(std::max_element(logits, logits + vocab) - logits);  // the first maximum
  }
  probs_.assign(vocab, 0.0);
  for (std::size_t i = 0; i < vocab; ++i) probs_[i] = static_cast<double>(logits[i]) / config_.temperature;
  if (config_.top_k > 0) {
    std::vector<double> sorted(probs_);
    std::size_t k = std::min<std::size_t>(static_cast<std::size_t>(config_.top_k), vocab);
    std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end(), std::greater<double>());
    const double kth = sorted[k - 1];
    for (double& x : probs_) x = x < kth ? -INFINITY : x;
  }
  const double top = *std::max_element(probs_.begin(), probs_.end());
  double total = 0;
  for (double& x : probs_) total += (x = std::exp(x - top));
  for (double& x : probs_) x /= total;
  if (config_.top_p < 1) {
    order_.resize(vocab);
    std::iota(order_.begin(), order_.end(), 0);
    std::stable_sort(order_.begin(), order_.end(), [&](std::size_t a, std::size_t b) { return probs_[a] > probs_[b]; });
    double before = 0, kept = 0;
    for (std::size_t idx : order_) {
      const double p = probs_[idx];
      if (before < config_.top_p) {
        kept += p;
      } else {
        probs_[idx] = 0;
      }
      before += p;
    }
    for (double& x : probs_) x /= kept;
  }
  // inverse CDF with a 53-bit uniform in [0, 1): the same stream on every platform for a given seed
  const double u = static_cast<double>(rng_() >> 11) * (1.0 / 9007199254740992.0);
  double cumulative = 0;
  std::size_t last = 0;
  for (std::size_t i = 0; i < vocab; ++i) {
    if (probs_[i] <= 0) continue;
    last = i;
    cumulative += probs_[i];
    if (u < cumulative) return static_cast<std::int64_t>(i);
  }
  return static_cast<std::int64_t>(last);  // u beyond the rounded total: the last token with mass
}

}  // namespace seqedge
