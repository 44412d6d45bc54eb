// Next-token sampling on float logits, the same filters as seqedge.sampling.Sampler: temperature (0 = greedy),
// top-k (ties with the k-th value kept), top-p (smallest prefix of the sorted distribution reaching p; the top
// token is always kept). Greedy picks the first maximum, as numpy's argmax does, so greedy output equals
// Python's; the random stream (mt19937_64) differs from numpy's, so seeded samples match only within this runner.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace seqedge {

struct SamplingConfig {
  double temperature = 0.0;
  std::int64_t top_k = 0;
  double top_p = 1.0;
  std::uint64_t seed = 0;

  void validate() const;  // throws Error(ARGUMENT) naming the field
};

class Sampler {
 public:
  explicit Sampler(const SamplingConfig& config);
  // logits [vocab]; throws Error(ARGUMENT) on non-finite logits
  std::int64_t operator()(const float* logits, std::size_t vocab);

 private:
  SamplingConfig config_;
  std::mt19937_64 rng_;
  std::vector<double> probs_;
  std::vector<std::size_t> order_;
};

}  // namespace seqedge
