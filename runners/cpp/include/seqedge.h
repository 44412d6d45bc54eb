/* seqedge C API: run a seqedge artifact's ExecuTorch program (step/chunk with the state as explicit tensors).
 *
 * Every function returns a seqedge_status; on anything but SEQEDGE_OK, seqedge_last_error() returns a message
 * (what happened, why, how to fix) for the calling thread, valid until that thread's next seqedge call.
 * No function aborts on bad input: wrong sizes, tampered files, foreign states and out-of-range token ids are
 * reported as errors. Handles are not thread-safe; use one model per thread, or serialise calls.
 *
 * A state holds one sequence (batch 1): the tensors listed in the artifact's manifest, float32, fixed size.
 *
 *   seqedge_model* model; seqedge_state* state;
 *   if (seqedge_open("artifact", "fp32", &model) != SEQEDGE_OK) fprintf(stderr, "%s\n", seqedge_last_error());
 *   seqedge_init_state(model, &state);
 *   seqedge_prefill(model, state, prompt_ids, n, logits, vocab);      // logits of the last prompt token
 *   seqedge_step(model, state, token, logits, vocab);                  // state advanced in place
 *   seqedge_state_free(state); seqedge_close(model);
 */
#ifndef SEQEDGE_H
#define SEQEDGE_H

#include <stddef.h>
#include <stdint.h>

#if defined(SEQEDGE_BUILDING)
#define SEQEDGE_API __attribute__((visibility("default")))
#else
#define SEQEDGE_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum seqedge_status {
  SEQEDGE_OK = 0,
  SEQEDGE_ERR_ARGUMENT = 1,  /* a NULL handle, a buffer of the wrong size, a bad sampling parameter */
  SEQEDGE_ERR_TOKEN = 2,     /* a token id outside [0, vocab_size) */
  SEQEDGE_ERR_IO = 3,        /* a file could not be read or written */
  SEQEDGE_ERR_ARTIFACT = 4,  /* manifest missing/foreign/of another version, a file tampered with (sha256) */
  SEQEDGE_ERR_STATE = 5,     /* a state file of another model, format or shape */
  SEQEDGE_ERR_RUNTIME = 6,   /* ExecuTorch failed to load or run the program */
  SEQEDGE_ERR_INTERNAL = 7   /* out of memory or a bug: please report */
} seqedge_status;

typedef struct seqedge_model seqedge_model;
typedef struct seqedge_state seqedge_state;
typedef struct seqedge_sampler seqedge_sampler;

typedef struct seqedge_info {
  int64_t vocab_size;
  int64_t chunk_size;      /* tokens per chunk call; prefill = floor(N / chunk_size) chunks, then steps */
  int64_t num_state_tensors;
  int64_t state_bytes;     /* bytes of one sequence's state: fixed, whatever the context length */
  int64_t bos_id, eos_id, pad_id;  /* the byte tokenizer's specials */
  const char* fingerprint; /* the model's fingerprint; a state of another fingerprint is refused */
  const char* variant;     /* e.g. "executorch/fp32" */
  int64_t threads;         /* threads a call runs on: 1 = the calling thread, more = ExecuTorch's thread pool */
} seqedge_info;

/* The calling thread's message for the last failed call ("" if none). */
SEQEDGE_API const char* seqedge_last_error(void);
SEQEDGE_API const char* seqedge_status_name(seqedge_status status);

/* ExecuTorch's own log lines (process-wide): 0 drops its debug and info lines and keeps errors (the default of
 * the seqedge-run CLI), 1 restores them. Call before seqedge_open. */
SEQEDGE_API void seqedge_set_runtime_logging(int verbose);

/* Opens artifact_dir's executorch variant at `quantization` ("fp32"/"none", "int8", ...; NULL: fp32, or the only
 * executorch variant). Checks the manifest (format, version, state spec, chunk size, vocabulary), confines paths
 * to artifact_dir and checks the program's sha256 before loading it. */
SEQEDGE_API seqedge_status seqedge_open(const char* artifact_dir, const char* quantization, seqedge_model** out);
/* seqedge_open with the thread count: 0 chooses by the model's size (what seqedge_open does: the calling thread
 * below 16M parameters, where a second thread's hand-offs cost more than they save, else ExecuTorch's pool);
 * 1 runs every call on the calling thread; ExecuTorch's pool size (one per performant core, shared by the
 * process) runs on the pool. Another count is SEQEDGE_ERR_ARGUMENT naming the pool's size. */
SEQEDGE_API seqedge_status seqedge_open_threads(const char* artifact_dir, const char* quantization, int threads,
                                                seqedge_model** out);
SEQEDGE_API seqedge_status seqedge_close(seqedge_model* model);
/* Strings in *info live as long as the model. */
SEQEDGE_API seqedge_status seqedge_get_info(const seqedge_model* model, seqedge_info* info);

/* A zero state (the start of a sequence), owned by the caller; free with seqedge_state_free. */
SEQEDGE_API seqedge_status seqedge_init_state(const seqedge_model* model, seqedge_state** out);
SEQEDGE_API seqedge_status seqedge_state_copy(const seqedge_state* state, seqedge_state** out);
SEQEDGE_API void seqedge_state_free(seqedge_state* state);

/* Feeds n_tokens tokens (n_tokens >= 1), advancing `state` in place. logits_len selects what is written:
 * 0 (logits may be NULL): nothing; vocab_size: the last token's logits; n_tokens * vocab_size: every token's,
 * row-major [n_tokens, vocab_size]. Any other length is SEQEDGE_ERR_ARGUMENT. On error the state is unchanged. */
SEQEDGE_API seqedge_status seqedge_prefill(seqedge_model* model, seqedge_state* state, const int64_t* tokens,
                                           size_t n_tokens, float* logits, size_t logits_len);
/* One token: writes its logits [vocab_size] (logits_len must be vocab_size) and advances `state` in place. */
SEQEDGE_API seqedge_status seqedge_step(seqedge_model* model, seqedge_state* state, int64_t token, float* logits,
                                        size_t logits_len);

/* One call of the step method (n_tokens 1) or the chunk method (n_tokens = chunk_size) on state buffers the
 * caller owns, for callers that keep the state themselves (the Python runtime's numpy arrays): state_in[i] and
 * state_out[i] point at the state's tensor i for one sequence, float32 row-major, as many elements as its spec
 * in the manifest (seqedge_get_state_numel); state_out may be state_in (the outputs are copied once the program
 * has run). logits: [n_tokens, vocab_size] (logits_len n_tokens * vocab_size), or NULL with logits_len 0. Checks
 * the token ids; the buffers' sizes cannot be checked. On error nothing is written. */
SEQEDGE_API seqedge_status seqedge_run_buffers(seqedge_model* model, const int64_t* tokens, size_t n_tokens,
                                               const float* const* state_in, float* const* state_out, float* logits,
                                               size_t logits_len);
/* Elements of the state's tensor `index` (0 <= index < num_state_tensors) for one sequence. */
SEQEDGE_API seqedge_status seqedge_get_state_numel(const seqedge_model* model, int64_t index, int64_t* numel);

/* The state as a safetensors file with seqedge metadata: the layout Python's State.save writes and State.load
 * reads, so a state moves between the Python runtimes and this runner both ways. Writes atomically. */
SEQEDGE_API seqedge_status seqedge_state_save(const seqedge_model* model, const seqedge_state* state,
                                              const char* path);
/* Loads a state written by seqedge_state_save or State.save; refuses one of another model (fingerprint),
 * another state spec, or a batch other than 1. */
SEQEDGE_API seqedge_status seqedge_state_load(const seqedge_model* model, const char* path, seqedge_state** out);

/* Sampling: temperature 0 is greedy (argmax, the lowest id on ties); top_k 0 and top_p 1 disable those filters.
 * Seeded: the same seed gives the same tokens. */
SEQEDGE_API seqedge_status seqedge_sampler_new(double temperature, int64_t top_k, double top_p, uint64_t seed,
                                               seqedge_sampler** out);
SEQEDGE_API seqedge_status seqedge_sample(seqedge_sampler* sampler, const float* logits, size_t vocab_size,
                                          int64_t* token);
SEQEDGE_API void seqedge_sampler_free(seqedge_sampler* sampler);

/* The byte tokenizer: UTF-8 bytes are ids 0-255, preceded by BOS when add_bos. Writes at most capacity ids and
 * the needed count to *n_ids (call with capacity 0 to size the buffer; SEQEDGE_ERR_ARGUMENT if too small).
 * An artifact whose tokenizer is a Hugging Face tokenizer.json runs on token ids only: this and
 * seqedge_token_bytes return SEQEDGE_ERR_ARGUMENT naming the tokenizer type (bos/eos/pad_id are -1 where unset). */
SEQEDGE_API seqedge_status seqedge_encode(const seqedge_model* model, const char* text, size_t text_len,
                                          int add_bos, int64_t* ids, size_t capacity, size_t* n_ids);
/* One token's bytes: 0 or 1 byte for this tokenizer (specials decode to nothing). SEQEDGE_ERR_TOKEN out of range. */
SEQEDGE_API seqedge_status seqedge_token_bytes(const seqedge_model* model, int64_t token, char* out,
                                               size_t capacity, size_t* n_bytes);

#ifdef __cplusplus
}
#endif

#endif /* SEQEDGE_H */
