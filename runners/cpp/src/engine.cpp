#include "engine.h"

#include <atomic>
#include <cstdio>
#include <cstring>
#include <optional>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/extension/threadpool/threadpool_guard.h>
#include <executorch/runtime/backend/backend_options_map.h>
#include <executorch/runtime/backend/options.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>
#include <executorch/runtime/platform/platform.h>

#include "error.h"

namespace seqedge {

namespace et = executorch::runtime;
namespace etx = executorch::extension;
using executorch::aten::ScalarType;

namespace {

[[noreturn]] void runtime_error(const std::string& what, et::Error err) {
  throw Error(SEQEDGE_ERR_RUNTIME, what + ": ExecuTorch error " + et::to_string(err) + " (code " +
                                       std::to_string(static_cast<int>(err)) + ")");
}

std::atomic<bool> verbose_logs{true};

void filtered_log(et_timestamp_t, et_pal_log_level_t level, const char* filename, const char*, std::size_t line,
                  const char* message, std::size_t length) {
  if (!verbose_logs && (level == kDebug || level == kInfo)) return;
  std::fprintf(stderr, "[executorch %c %s:%zu] %.*s\n", static_cast<char>(level), filename, line,
               static_cast<int>(length), message);
}

const char* method_name(Entry entry) { return entry == Entry::Step ? "step" : "chunk"; }

// The threads a model runs on when the caller leaves the choice (0): 1 below kSingleThreadParameters
// parameters (a step of a few MFLOP is a few hundred tiny kernels: hand-offs to a second thread cost more than
// they save), else ExecuTorch's thread pool. The Python runtimes make the same choice from the step's FLOPs
// (runtimes/threads.py: 32 MFLOP, two per parameter).
constexpr std::int64_t kSingleThreadParameters = 16'000'000;

// The size of ExecuTorch's process-wide thread pool (XNNPACK's threads).
int pool_threads() { return static_cast<int>(executorch::extension::get_thread_count()); }

int default_threads(const Manifest& manifest) {
  return manifest.num_parameters > 0 && manifest.num_parameters < kSingleThreadParameters ? 1 : pool_threads();
}

// Holds ExecuTorch's thread-local "no thread pool" switch on for a one-thread model, and leaves it as it is
// otherwise. XNNPACK takes the pool when a method loads (none while the switch is on: it then runs on the calling
// thread); the portable kernels' parallel loops read the switch at each call.
class OnCallerThread {
 public:
  explicit OnCallerThread(bool on) {
    if (on) guard_.emplace();
  }

 private:
  std::optional<executorch::extension::threadpool::NoThreadPoolGuard> guard_;
};

// The program's tensor (max bound sizes for the symbolic batch) against the manifest's [batch, dims...].
void check_tensor(const et::TensorInfo& info, ScalarType dtype, const std::vector<std::int64_t>& dims,
                  const std::string& what) {
  auto sizes = info.sizes();
  bool ok = info.scalar_type() == dtype && sizes.size() == dims.size() + 1;
  for (std::size_t d = 0; ok && d < dims.size(); ++d) ok = sizes[d + 1] == dims[d];
  if (!ok) {
    std::string have;
    for (std::size_t d = 0; d < sizes.size(); ++d) have += (d ? ", " : "") + std::to_string(sizes[d]);
    std::string want = "batch";
    for (std::int64_t v : dims) want += ", " + std::to_string(v);
    throw Error(SEQEDGE_ERR_ARTIFACT, what + " is [" + have + "] (dtype " + std::to_string(int(info.scalar_type())) +
                                          ") in the program but [" + want + "] in the manifest; re-export");
  }
}

}  // namespace

void set_runtime_logging(bool verbose) {
  verbose_logs = verbose;
  static const bool registered = et::register_pal(et::PalImpl::create(&filtered_log, __FILE__));
  (void)registered;
}

Engine::Engine(const Manifest& manifest, int threads) : manifest_(manifest) {
  const int pool = pool_threads();
  threads_ = threads == 0 ? default_threads(manifest) : threads;
  if (threads_ < 0 || (threads_ != 1 && threads_ != pool)) {
    throw Error(SEQEDGE_ERR_ARGUMENT, "threads " + std::to_string(threads) + " is not available: a model runs on "
                                      "the calling thread (1) or on ExecuTorch's thread pool of this process (" +
                                      std::to_string(pool) + "), or 0 to choose by the model's size");
  }
  const OnCallerThread on_caller(threads_ == 1);
  module_ = std::make_unique<etx::module::Module>(manifest.program_path, etx::module::Module::LoadMode::File);
  // step and chunk are separate XNNPACK delegates over the same named weights; without the weight cache each
  // packs its own copy
  xnnpack_options_ = std::make_unique<et::BackendOptions<2>>();
  backend_options_ = std::make_unique<et::LoadBackendOptionsMap>();
  if (xnnpack_options_->set_option("weight_cache_enabled", true) != et::Error::Ok ||
      backend_options_->set_options("XnnpackBackend", xnnpack_options_->view()) != et::Error::Ok) {
    throw Error(SEQEDGE_ERR_INTERNAL, "cannot set the XNNPACK backend's options");
  }
  if (auto err = module_->load(*backend_options_, et::Program::Verification::InternalConsistency);
      err != et::Error::Ok) {
    runtime_error("cannot load " + manifest.program_path, err);
  }
  check_method("step", 0);
  check_method("chunk", manifest.chunk_size);
}

Engine::~Engine() = default;

void Engine::check_method(const std::string& name, std::int64_t tokens_per_call) {
  auto names = module_->method_names();
  if (!names.ok() || names->count(name) == 0) {
    throw Error(SEQEDGE_ERR_ARTIFACT, manifest_.program_path + " has no '" + name + "' method; re-run "
                                      "`seqedge export --target executorch`");
  }
  if (auto err = module_->load_method(name); err != et::Error::Ok) runtime_error("cannot load method " + name, err);
  auto meta = module_->method_meta(name);
  if (!meta.ok()) runtime_error("cannot read the signature of " + name, meta.error());
  const std::size_t n_state = manifest_.specs.size();
  if (meta->num_inputs() != n_state + 1 || meta->num_outputs() != n_state + 1) {
    throw Error(SEQEDGE_ERR_ARTIFACT, "method " + name + " takes " + std::to_string(meta->num_inputs()) +
                                          " inputs and returns " + std::to_string(meta->num_outputs()) +
                                          " outputs; the manifest's state needs " + std::to_string(n_state + 1));
  }
  std::vector<std::int64_t> token_dims, logit_dims{manifest_.vocab_size};
  if (tokens_per_call > 0) {
    token_dims.push_back(tokens_per_call);
    logit_dims.insert(logit_dims.begin(), tokens_per_call);
  }
  for (std::size_t i = 0; i <= n_state; ++i) {
    auto in = meta->input_tensor_meta(i);
    auto out = meta->output_tensor_meta(i);
    if (!in.ok() || !out.ok()) {
      throw Error(SEQEDGE_ERR_ARTIFACT, "method " + name + " has a non-tensor input or output " + std::to_string(i));
    }
    if (i == 0) {
      check_tensor(*in, ScalarType::Long, token_dims, name + " tokens");
      check_tensor(*out, ScalarType::Float, logit_dims, name + " logits");
    } else {
      const StateSpec& spec = manifest_.specs[i - 1];
      check_tensor(*in, ScalarType::Float, spec.dims, name + " input " + spec.name);
      check_tensor(*out, ScalarType::Float, spec.dims, name + " output new_" + spec.name);
    }
  }
}

void Engine::run(Entry entry, const std::int64_t* tokens, const StateTensors& state, float* logits,
                 StateTensors& next) {
  std::vector<const float*> in;
  std::vector<float*> out;
  for (std::size_t i = 0; i < state.size(); ++i) {
    in.push_back(state[i].data());
    out.push_back(next[i].data());
  }
  run(entry, tokens, in.data(), logits, out.data());
}

void Engine::run(Entry entry, const std::int64_t* tokens, const float* const* state, float* logits,
                 float* const* next) {
  const std::size_t n_state = manifest_.specs.size();
  const std::int32_t n_tokens = entry == Entry::Step ? 1 : static_cast<std::int32_t>(manifest_.chunk_size);
  std::vector<etx::TensorPtr> owned;
  owned.reserve(n_state + 1);
  std::vector<executorch::aten::SizesType> token_sizes{1};
  if (entry == Entry::Chunk) token_sizes.push_back(n_tokens);
  // the program reads inputs and never writes them: the const_casts only satisfy from_blob's signature
  owned.push_back(etx::from_blob(const_cast<std::int64_t*>(tokens), token_sizes, ScalarType::Long));
  for (std::size_t i = 0; i < n_state; ++i) {
    std::vector<executorch::aten::SizesType> sizes{1};
    for (std::int64_t d : manifest_.specs[i].dims) sizes.push_back(static_cast<executorch::aten::SizesType>(d));
    owned.push_back(etx::from_blob(const_cast<float*>(state[i]), sizes, ScalarType::Float));
  }
  std::vector<et::EValue> inputs(owned.begin(), owned.end());
  const OnCallerThread on_caller(threads_ == 1);
  auto result = module_->execute(method_name(entry), inputs);
  if (!result.ok()) runtime_error(std::string("running ") + method_name(entry) + " failed", result.error());
  const auto& outputs = *result;
  if (outputs.size() != n_state + 1) {
    throw Error(SEQEDGE_ERR_RUNTIME, std::string(method_name(entry)) + " returned " + std::to_string(outputs.size()) +
                                         " outputs, expected " + std::to_string(n_state + 1));
  }
  auto checked = [&](std::size_t i, std::size_t numel) -> const float* {
    if (!outputs[i].isTensor()) throw Error(SEQEDGE_ERR_RUNTIME, "output " + std::to_string(i) + " is not a tensor");
    const auto& t = outputs[i].toTensor();
    if (t.scalar_type() != ScalarType::Float || static_cast<std::size_t>(t.numel()) != numel) {
      throw Error(SEQEDGE_ERR_RUNTIME, "output " + std::to_string(i) + " of " + method_name(entry) +
                                           " has an unexpected dtype or size");
    }
    return t.const_data_ptr<float>();
  };
  const std::size_t n_logits = static_cast<std::size_t>(n_tokens * manifest_.vocab_size);
  const float* logits_out = checked(0, n_logits);
  std::vector<const float*> state_out;
  std::vector<std::size_t> numel;
  for (std::size_t i = 0; i < n_state; ++i) {
    numel.push_back(static_cast<std::size_t>(manifest_.specs[i].numel()));
    state_out.push_back(checked(i + 1, numel[i]));
  }
  // copies: the outputs live in the method's planned memory, which the next call reuses
  if (logits != nullptr) std::memcpy(logits, logits_out, n_logits * sizeof(float));
  for (std::size_t i = 0; i < n_state; ++i) std::memcpy(next[i], state_out[i], numel[i] * sizeof(float));
}

}  // namespace seqedge
