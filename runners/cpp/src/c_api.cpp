// The C API of seqedge.h over the C++ pieces: every entry point catches everything and returns a status, with
// the message kept per thread for seqedge_last_error.
#include <cstring>
#include <new>
#include <string>

#include "engine.h"
#include "error.h"
#include "manifest.h"
#include "sampler.h"
#include "seqedge.h"
#include "state_file.h"
#include "tokenizer.h"

using seqedge::Entry;
using seqedge::Error;

struct seqedge_model {
  seqedge_model(seqedge::Manifest m, int threads)
      : manifest(std::move(m)), tokenizer(manifest.tokenizer), engine(manifest, threads) {
    for (const auto& spec : manifest.specs) {
      state_bytes += spec.numel() * static_cast<std::int64_t>(sizeof(float));
      work.emplace_back(static_cast<std::size_t>(spec.numel()));
      next.emplace_back(static_cast<std::size_t>(spec.numel()));
    }
    chunk_logits.resize(static_cast<std::size_t>(manifest.chunk_size * manifest.vocab_size));
  }

  seqedge::Manifest manifest;
  seqedge::ByteTokenizer tokenizer;
  seqedge::Engine engine;
  std::int64_t state_bytes = 0;
  seqedge::StateTensors work, next;  // scratch: a call's state never touches the caller's until it succeeded
  std::vector<float> chunk_logits;
};

struct seqedge_state {
  std::string fingerprint;
  seqedge::StateTensors tensors;
};

struct seqedge_sampler {
  explicit seqedge_sampler(const seqedge::SamplingConfig& c) : sample(c) {}
  seqedge::Sampler sample;
};

namespace {

thread_local std::string last_error;

template <class F>
seqedge_status guarded(F&& body) noexcept {
  try {
    body();
    last_error.clear();
    return SEQEDGE_OK;
  } catch (const Error& err) {
    last_error = err.what();
    return err.status();
  } catch (const std::bad_alloc&) {
    last_error = "out of memory";
  } catch (const std::exception& err) {
    last_error = std::string("internal error: ") + err.what();
  } catch (...) {
    last_error = "internal error: an unknown exception";
  }
  return SEQEDGE_ERR_INTERNAL;
}

void require(bool ok, const char* what) {
  if (!ok) throw Error(SEQEDGE_ERR_ARGUMENT, what);
}

void check_state(const seqedge_model* model, const seqedge_state* state) {
  require(model != nullptr, "model is NULL");
  require(state != nullptr, "state is NULL");
  if (state->fingerprint != model->manifest.fingerprint || state->tensors.size() != model->work.size()) {
    throw Error(SEQEDGE_ERR_STATE, "the state belongs to another model (fingerprint " + state->fingerprint +
                                       ", expected " + model->manifest.fingerprint + "); create it with "
                                       "seqedge_init_state of this model");
  }
}

void check_tokens(const seqedge_model* model, const std::int64_t* tokens, std::size_t n) {
  require(tokens != nullptr || n == 0, "tokens is NULL");
  const std::int64_t vocab = model->manifest.vocab_size;
  for (std::size_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab) {
      throw Error(SEQEDGE_ERR_TOKEN, "token id " + std::to_string(tokens[i]) + " at position " + std::to_string(i) +
                                         " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
    }
  }
}

// One entry-point call on model->work, the result swapped in.
void run(seqedge_model* model, Entry entry, const std::int64_t* tokens, float* logits) {
  model->engine.run(entry, tokens, model->work, logits, model->next);
  model->work.swap(model->next);
}

}  // namespace

extern "C" {

const char* seqedge_last_error(void) { return last_error.c_str(); }

const char* seqedge_status_name(seqedge_status status) {
  switch (status) {
    case SEQEDGE_OK: return "ok";
    case SEQEDGE_ERR_ARGUMENT: return "invalid argument";
    case SEQEDGE_ERR_TOKEN: return "token out of range";
    case SEQEDGE_ERR_IO: return "I/O error";
    case SEQEDGE_ERR_ARTIFACT: return "invalid artifact";
    case SEQEDGE_ERR_STATE: return "invalid state";
    case SEQEDGE_ERR_RUNTIME: return "runtime error";
    case SEQEDGE_ERR_INTERNAL: return "internal error";
  }
  return "unknown status";
}

void seqedge_set_runtime_logging(int verbose) { seqedge::set_runtime_logging(verbose != 0); }

seqedge_status seqedge_open(const char* artifact_dir, const char* quantization, seqedge_model** out) {
  return seqedge_open_threads(artifact_dir, quantization, 0, out);
}

seqedge_status seqedge_open_threads(const char* artifact_dir, const char* quantization, int threads,
                                    seqedge_model** out) {
  return guarded([&] {
    require(out != nullptr, "out is NULL");
    *out = nullptr;
    require(artifact_dir != nullptr, "artifact_dir is NULL");
    require(threads >= 0, "threads must be 0 (chosen by the model's size) or a positive count");
    seqedge::Manifest manifest = seqedge::read_manifest(artifact_dir, quantization);
    seqedge::verify_program(manifest);
    *out = new seqedge_model(std::move(manifest), threads);
  });
}

seqedge_status seqedge_close(seqedge_model* model) {
  return guarded([&] { delete model; });
}

seqedge_status seqedge_get_info(const seqedge_model* model, seqedge_info* info) {
  return guarded([&] {
    require(model != nullptr && info != nullptr, "model and info must not be NULL");
    const auto& m = model->manifest;
    *info = seqedge_info{m.vocab_size, m.chunk_size, static_cast<std::int64_t>(m.specs.size()), model->state_bytes,
                         m.tokenizer.bos_id, m.tokenizer.eos_id, m.tokenizer.pad_id, m.fingerprint.c_str(),
                         m.variant.c_str(), model->engine.threads()};
  });
}

seqedge_status seqedge_init_state(const seqedge_model* model, seqedge_state** out) {
  return guarded([&] {
    require(model != nullptr && out != nullptr, "model and out must not be NULL");
    *out = nullptr;
    auto* state = new seqedge_state{model->manifest.fingerprint, {}};
    for (const auto& t : model->work) state->tensors.emplace_back(t.size(), 0.0f);
    *out = state;
  });
}

seqedge_status seqedge_state_copy(const seqedge_state* state, seqedge_state** out) {
  return guarded([&] {
    require(state != nullptr && out != nullptr, "state and out must not be NULL");
    *out = nullptr;
    *out = new seqedge_state(*state);
  });
}

void seqedge_state_free(seqedge_state* state) { delete state; }

seqedge_status seqedge_prefill(seqedge_model* model, seqedge_state* state, const std::int64_t* tokens,
                               size_t n_tokens, float* logits, size_t logits_len) {
  return guarded([&] {
    check_state(model, state);
    require(n_tokens >= 1, "prefill needs at least one token");
    check_tokens(model, tokens, n_tokens);
    const std::size_t vocab = static_cast<std::size_t>(model->manifest.vocab_size);
    const std::size_t chunk = static_cast<std::size_t>(model->manifest.chunk_size);
    const bool all = logits_len == n_tokens * vocab && n_tokens <= SIZE_MAX / vocab;
    if (!(logits_len == 0 || logits_len == vocab || all)) {
      throw Error(SEQEDGE_ERR_ARGUMENT, "logits_len must be 0, vocab_size (" + std::to_string(vocab) +
                                            ") or n_tokens * vocab_size (" + std::to_string(n_tokens * vocab) +
                                            "), got " + std::to_string(logits_len));
    }
    require(logits_len == 0 || logits != nullptr, "logits is NULL but logits_len is not 0");
    for (std::size_t i = 0; i < model->work.size(); ++i) model->work[i] = state->tensors[i];
    const std::size_t full = n_tokens - n_tokens % chunk;
    for (std::size_t start = 0; start < full; start += chunk) {
      const bool last = start + chunk == n_tokens;
      float* dest = all ? logits + start * vocab : (last && logits_len ? model->chunk_logits.data() : nullptr);
      run(model, Entry::Chunk, tokens + start, dest);
      if (last && logits_len == vocab) std::memcpy(logits, dest + (chunk - 1) * vocab, vocab * sizeof(float));
    }
    for (std::size_t t = full; t < n_tokens; ++t) {
      float* dest = all ? logits + t * vocab : (t + 1 == n_tokens && logits_len ? logits : nullptr);
      run(model, Entry::Step, tokens + t, dest);
    }
    state->tensors.swap(model->work);
  });
}

seqedge_status seqedge_run_buffers(seqedge_model* model, const int64_t* tokens, size_t n_tokens,
                                   const float* const* state_in, float* const* state_out, float* logits,
                                   size_t logits_len) {
  return guarded([&] {
    require(model != nullptr, "model is NULL");
    const std::size_t chunk = static_cast<std::size_t>(model->manifest.chunk_size);
    if (n_tokens != 1 && n_tokens != chunk) {
      throw Error(SEQEDGE_ERR_ARGUMENT, "n_tokens must be 1 (step) or chunk_size (" + std::to_string(chunk) +
                                            "), got " + std::to_string(n_tokens));
    }
    check_tokens(model, tokens, n_tokens);
    require(state_in != nullptr && state_out != nullptr, "state_in and state_out must not be NULL");
    for (std::size_t i = 0; i < model->manifest.specs.size(); ++i) {
      if (state_in[i] == nullptr || state_out[i] == nullptr) {
        throw Error(SEQEDGE_ERR_ARGUMENT, "state buffer " + std::to_string(i) + " is NULL");
      }
    }
    const std::size_t vocab = static_cast<std::size_t>(model->manifest.vocab_size);
    if (!(logits_len == 0 || logits_len == n_tokens * vocab)) {
      throw Error(SEQEDGE_ERR_ARGUMENT, "logits_len must be 0 or n_tokens * vocab_size (" +
                                            std::to_string(n_tokens * vocab) + "), got " + std::to_string(logits_len));
    }
    require(logits_len == 0 || logits != nullptr, "logits is NULL but logits_len is not 0");
    model->engine.run(n_tokens == 1 ? Entry::Step : Entry::Chunk, tokens, state_in, logits_len ? logits : nullptr,
                      state_out);
  });
}

seqedge_status seqedge_get_state_numel(const seqedge_model* model, int64_t index, int64_t* numel) {
  return guarded([&] {
    require(model != nullptr && numel != nullptr, "model and numel must not be NULL");
    const auto n = static_cast<std::int64_t>(model->manifest.specs.size());
    if (index < 0 || index >= n) {
      throw Error(SEQEDGE_ERR_ARGUMENT, "index must lie in [0, " + std::to_string(n) + "), got " + std::to_string(index));
    }
    *numel = model->manifest.specs[static_cast<std::size_t>(index)].numel();
  });
}

seqedge_status seqedge_step(seqedge_model* model, seqedge_state* state, int64_t token, float* logits,
                            size_t logits_len) {
  return guarded([&] {
    check_state(model, state);
    check_tokens(model, &token, 1);
    require(logits != nullptr, "logits is NULL");
    if (logits_len != static_cast<std::size_t>(model->manifest.vocab_size)) {
      throw Error(SEQEDGE_ERR_ARGUMENT, "logits_len must be vocab_size (" + std::to_string(model->manifest.vocab_size) +
                                            "), got " + std::to_string(logits_len));
    }
    model->engine.run(Entry::Step, &token, state->tensors, logits, model->next);
    state->tensors.swap(model->next);
  });
}

seqedge_status seqedge_state_save(const seqedge_model* model, const seqedge_state* state, const char* path) {
  return guarded([&] {
    check_state(model, state);
    require(path != nullptr && *path != '\0', "path is NULL or empty");
    seqedge::write_state_file(path, model->manifest.fingerprint, model->manifest.specs, state->tensors);
  });
}

seqedge_status seqedge_state_load(const seqedge_model* model, const char* path, seqedge_state** out) {
  return guarded([&] {
    require(model != nullptr && out != nullptr, "model and out must not be NULL");
    *out = nullptr;
    require(path != nullptr && *path != '\0', "path is NULL or empty");
    auto tensors = seqedge::read_state_file(path, model->manifest.fingerprint, model->manifest.specs);
    *out = new seqedge_state{model->manifest.fingerprint, std::move(tensors)};
  });
}

seqedge_status seqedge_sampler_new(double temperature, int64_t top_k, double top_p, uint64_t seed,
                                   seqedge_sampler** out) {
  return guarded([&] {
    require(out != nullptr, "out is NULL");
    *out = nullptr;
    *out = new seqedge_sampler(seqedge::SamplingConfig{temperature, top_k, top_p, seed});
  });
}

seqedge_status seqedge_sample(seqedge_sampler* sampler, const float* logits, size_t vocab_size, int64_t* token) {
  return guarded([&] {
    require(sampler != nullptr && token != nullptr, "sampler and token must not be NULL");
    *token = sampler->sample(logits, vocab_size);
  });
}

void seqedge_sampler_free(seqedge_sampler* sampler) { delete sampler; }

seqedge_status seqedge_encode(const seqedge_model* model, const char* text, size_t text_len, int add_bos,
                              int64_t* ids, size_t capacity, size_t* n_ids) {
  return guarded([&] {
    require(model != nullptr && n_ids != nullptr, "model and n_ids must not be NULL");
    require(text != nullptr || text_len == 0, "text is NULL");
    auto encoded = model->tokenizer.encode(std::string(text ? text : "", text_len), add_bos != 0);
    *n_ids = encoded.size();
    if (capacity == 0) return;
    require(ids != nullptr, "ids is NULL");
    if (capacity < encoded.size()) {
      throw Error(SEQEDGE_ERR_ARGUMENT, "ids holds " + std::to_string(capacity) + " ids, the text needs " +
                                            std::to_string(encoded.size()));
    }
    std::memcpy(ids, encoded.data(), encoded.size() * sizeof(std::int64_t));
  });
}

seqedge_status seqedge_token_bytes(const seqedge_model* model, int64_t token, char* out, size_t capacity,
                                   size_t* n_bytes) {
  return guarded([&] {
    require(model != nullptr && n_bytes != nullptr, "model and n_bytes must not be NULL");
    std::string bytes = model->tokenizer.token_bytes(token);
    *n_bytes = bytes.size();
    if (bytes.empty()) return;
    require(out != nullptr && capacity >= bytes.size(), "out is NULL or too small");
    std::memcpy(out, bytes.data(), bytes.size());
  });
}

}  // extern "C"
