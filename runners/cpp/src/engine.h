// The artifact's ExecuTorch program: its step and chunk methods, checked against the manifest when loaded.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "manifest.h"
#include "state_file.h"

namespace executorch::extension::module {
class Module;
}
namespace executorch::runtime {
template <std::size_t N>
class BackendOptions;
class LoadBackendOptionsMap;
}  // namespace executorch::runtime

namespace seqedge {

// Routes ExecuTorch's log lines through a filter that drops debug/info unless `verbose`.
void set_runtime_logging(bool verbose);

enum class Entry { Step, Chunk };

class Engine {
 public:
  // Loads the (already sha256-checked) program and both methods; throws Error(RUNTIME) or Error(ARTIFACT) when
  // the program's inputs/outputs disagree with the manifest. `threads`: 0 chooses by the model's size; 1 runs
  // every call on the calling thread; the pool's size runs on ExecuTorch's pool; any other count is
  // Error(ARGUMENT) (the pool is one per process and sized by ExecuTorch).
  Engine(const Manifest& manifest, int threads);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // One call of `entry` for one sequence: tokens [1] (step) or [1, chunk_size] (chunk), already range-checked.
  // state[i] / next[i]: the manifest's state tensor i of one sequence (float32, numel of its spec); they may be
  // the same buffers (the outputs are copied after the program ran). Writes logits [T, vocab] when `logits` is not
  // null and the new state into `next`; nothing is written when the call fails.
  void run(Entry entry, const std::int64_t* tokens, const float* const* state, float* logits, float* const* next);
  void run(Entry entry, const std::int64_t* tokens, const StateTensors& state, float* logits, StateTensors& next);

  // The threads a call runs on (1: the calling thread; more: ExecuTorch's pool).
  int threads() const { return threads_; }

 private:
  void check_method(const std::string& name, std::int64_t tokens_per_call);

  const Manifest& manifest_;
  int threads_ = 1;
  // the options outlive the module, which keeps pointers to them
  std::unique_ptr<executorch::runtime::BackendOptions<2>> xnnpack_options_;
  std::unique_ptr<executorch::runtime::LoadBackendOptionsMap> backend_options_;
  std::unique_ptr<executorch::extension::module::Module> module_;
};

}  // namespace seqedge
