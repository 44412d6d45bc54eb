// Unit tests of the C API on a real artifact (argv[1]: an artifact directory with an executorch fp32 variant).
// Bad input of every kind must come back as a status with a message, never as a crash; run under
// AddressSanitizer/UBSan (cmake -DSEQEDGE_ASAN=ON) so memory errors fail the run too.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "seqedge.h"

namespace fs = std::filesystem;

namespace {

int failures = 0;

#define EXPECT(cond)                                                             \
  do {                                                                           \
    if (!(cond)) {                                                               \
      ++failures;                                                                \
      std::fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond);    \
    }                                                                            \
  } while (0)

// A failing call: the expected status and a non-empty message.
#define EXPECT_STATUS(call, status)                                                               \
  do {                                                                                            \
    seqedge_status got_ = (call);                                                                 \
    if (got_ != (status) || std::string(seqedge_last_error()).empty()) {                          \
      ++failures;                                                                                 \
      std::fprintf(stderr, "%s:%d: %s returned %s (%s), expected %s\n", __FILE__, __LINE__, #call, \
                   seqedge_status_name(got_), seqedge_last_error(), seqedge_status_name(status)); \
    }                                                                                             \
  } while (0)

#define EXPECT_OK(call) EXPECT_STATUS_OK(call, __LINE__)
void EXPECT_STATUS_OK(seqedge_status got, int line) {
  if (got != SEQEDGE_OK) {
    ++failures;
    std::fprintf(stderr, "line %d: %s: %s\n", line, seqedge_status_name(got), seqedge_last_error());
  }
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const fs::path& path, const std::string& data) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << data;
}

// Replaces the first occurrence (the test's edits of a saved state file).
void replace_once(std::string& text, const std::string& from, const std::string& to) {
  std::size_t at = text.find(from);
  if (at == std::string::npos) {
    std::fprintf(stderr, "test setup: '%s' not found\n", from.c_str());
    std::exit(2);
  }
  text.replace(at, from.size(), to);
}

float max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::fmax(m, std::fabs(a[i] - b[i]));
  return m;
}

void test_open_errors(const fs::path& artifact, const fs::path& scratch) {
  seqedge_model* model = reinterpret_cast<seqedge_model*>(&failures);  // must be reset to NULL on failure
  EXPECT_STATUS(seqedge_open(nullptr, nullptr, &model), SEQEDGE_ERR_ARGUMENT);
  EXPECT(model == nullptr);
  EXPECT_STATUS(seqedge_open(artifact.c_str(), nullptr, nullptr), SEQEDGE_ERR_ARGUMENT);
  EXPECT_STATUS(seqedge_open((scratch / "missing").c_str(), nullptr, &model), SEQEDGE_ERR_ARTIFACT);
  EXPECT_STATUS(seqedge_open(artifact.c_str(), "int3", &model), SEQEDGE_ERR_ARTIFACT);

  // a copy of the artifact, tampered with in each way below
  const fs::path copy = scratch / "tampered";
  const nlohmann::json manifest = nlohmann::json::parse(read_file(artifact / "manifest.json"));
  auto with_manifest = [&](const std::string& text) {
    fs::remove_all(copy);
    fs::copy(artifact, copy, fs::copy_options::recursive);
    write_file(copy / "manifest.json", text);
    return seqedge_open(copy.c_str(), "fp32", &model);
  };
  auto program_record = [](nlohmann::json& m) -> nlohmann::json& {
    for (auto& v : m["variants"])
      if (v["target"] == "executorch" && v["quantization"]["scheme"] == "none") return v["files"]["program"];
    std::fprintf(stderr, "test setup: the artifact has no executorch fp32 variant\n");
    std::exit(2);
  };
  EXPECT_STATUS(with_manifest("{not json"), SEQEDGE_ERR_ARTIFACT);
  EXPECT_STATUS(with_manifest("[1, 2]"), SEQEDGE_ERR_ARTIFACT);
  auto edited = [&](auto edit) {
    nlohmann::json m = manifest;
    edit(m);
    return with_manifest(m.dump(2));
  };
  EXPECT_STATUS(edited([](auto& m) { m["format_version"] = 99; }), SEQEDGE_ERR_ARTIFACT);
  EXPECT_STATUS(edited([](auto& m) { m["format"] = "onnx"; }), SEQEDGE_ERR_ARTIFACT);
  EXPECT_STATUS(edited([](auto& m) { m.erase("fingerprint"); }), SEQEDGE_ERR_ARTIFACT);
  EXPECT_STATUS(edited([&](auto& m) { program_record(m)["path"] = "../../etc/passwd"; }), SEQEDGE_ERR_ARTIFACT);
  EXPECT_STATUS(edited([&](auto& m) { program_record(m)["path"] = "/etc/passwd"; }), SEQEDGE_ERR_ARTIFACT);
  EXPECT_STATUS(edited([&](auto& m) { program_record(m)["path"] = 3; }), SEQEDGE_ERR_ARTIFACT);
  EXPECT_STATUS(edited([&](auto& m) { program_record(m)["sha256"] = std::string(64, '0'); }), SEQEDGE_ERR_ARTIFACT);
  EXPECT_STATUS(edited([](auto& m) { m["state"][1]["name"] = "state.7"; }), SEQEDGE_ERR_ARTIFACT);
  EXPECT_STATUS(edited([](auto& m) { m["state"][0]["dtype"] = "float16"; }), SEQEDGE_ERR_ARTIFACT);
  EXPECT_STATUS(edited([](auto& m) { m["state"][0]["shape"][1] = -4; }), SEQEDGE_ERR_ARTIFACT);
  EXPECT_STATUS(edited([](auto& m) { m["model"]["vocab_size"] = "many"; }), SEQEDGE_ERR_ARTIFACT);
  EXPECT_STATUS(edited([](auto& m) { m["chunk_size"] = m["chunk_size"].template get<int>() / 2;
                                     m["model"]["chunk_size"] = m["chunk_size"]; }), SEQEDGE_ERR_ARTIFACT);
  // a byte tokenizer covering more ids than the model has
  EXPECT_STATUS(edited([&](auto& m) {
                  m["tokenizer"] = {{"type", "bytes"}, {"bos_id", 256}, {"eos_id", 257}, {"pad_id", 258},
                                    {"vocab_size", m["model"]["vocab_size"].template get<int>() + 1}};
                }),
                SEQEDGE_ERR_ARTIFACT);
  EXPECT(std::string(seqedge_last_error()).find("exceeds the model's") != std::string::npos);
  // a state spec or vocabulary that the program's signature contradicts (sha256 and manifest otherwise intact)
  EXPECT_STATUS(edited([](auto& m) { m["state"][1]["shape"][1] = m["state"][1]["shape"][1].template get<int>() + 1; }),
                SEQEDGE_ERR_ARTIFACT);
  EXPECT_STATUS(edited([](auto& m) {
                  m["model"]["vocab_size"] = 300;
                  m["tokenizer"] = {{"type", "bytes"}, {"bos_id", 256}, {"eos_id", 257}, {"pad_id", 258},
                                    {"vocab_size", 300}};
                }),
                SEQEDGE_ERR_ARTIFACT);

  // one flipped byte of the program: the sha256 check refuses it before ExecuTorch parses anything
  fs::remove_all(copy);
  fs::copy(artifact, copy, fs::copy_options::recursive);
  std::string program = read_file(copy / "executorch/fp32/model.pte");
  program[program.size() / 2] ^= 0x5a;
  write_file(copy / "executorch/fp32/model.pte", program);
  EXPECT_STATUS(seqedge_open(copy.c_str(), "fp32", &model), SEQEDGE_ERR_ARTIFACT);
  EXPECT(std::string(seqedge_last_error()).find("sha256") != std::string::npos);
  write_file(copy / "executorch/fp32/model.pte", program.substr(0, program.size() / 3));
  EXPECT_STATUS(seqedge_open(copy.c_str(), "fp32", &model), SEQEDGE_ERR_ARTIFACT);
  fs::remove_all(copy);
}

// State files that are not this model's, or not state files at all.
void test_state_files(seqedge_model* model, const seqedge_info& info, seqedge_state* state, const std::string& path,
                      const fs::path& scratch) {
  const std::string original = read_file(path);
  seqedge_state* out = nullptr;
  auto load_text = [&](const std::string& text) {
    write_file(path, text);
    return seqedge_state_load(model, path.c_str(), &out);
  };
  EXPECT_STATUS(seqedge_state_load(model, (scratch / "none.safetensors").c_str(), &out), SEQEDGE_ERR_IO);
  EXPECT_STATUS(load_text(""), SEQEDGE_ERR_STATE);
  EXPECT_STATUS(load_text(original.substr(0, original.size() - 9)), SEQEDGE_ERR_STATE);
  EXPECT_STATUS(load_text(std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + original.substr(8)), SEQEDGE_ERR_STATE);
  std::string text = original;
  replace_once(text, info.fingerprint, std::string(std::string(info.fingerprint).size(), '0'));
  EXPECT_STATUS(load_text(text), SEQEDGE_ERR_STATE);
  EXPECT(std::string(seqedge_last_error()).find("another model") != std::string::npos);
  text = original;
  replace_once(text, "\"seqedge-state\"", "\"seqedge-other\"");
  EXPECT_STATUS(load_text(text), SEQEDGE_ERR_STATE);
  text = original;
  replace_once(text, "\"F32\"", "\"F64\"");
  EXPECT_STATUS(load_text(text), SEQEDGE_ERR_STATE);
  EXPECT(out == nullptr);
  EXPECT_STATUS(seqedge_state_save(model, state, ""), SEQEDGE_ERR_ARGUMENT);
  EXPECT_STATUS(seqedge_state_save(model, state, "/proc/definitely/not/writable"), SEQEDGE_ERR_IO);

}

void test_calls(seqedge_model* model, const seqedge_info& info, const fs::path& scratch) {
  const std::size_t vocab = static_cast<std::size_t>(info.vocab_size);
  const std::size_t n = static_cast<std::size_t>(2 * info.chunk_size + 5);  // two chunks and a tail of steps
  std::vector<std::int64_t> tokens(n);
  for (std::size_t i = 0; i < n; ++i) tokens[i] = static_cast<std::int64_t>((i * 37 + 11) % 256);
  seqedge_state* state = nullptr;
  EXPECT_OK(seqedge_init_state(model, &state));
  std::vector<float> all(n * vocab, NAN), last(vocab, NAN), logits(vocab, NAN);

  // bad input leaves the state as it was
  EXPECT_STATUS(seqedge_prefill(model, state, tokens.data(), 0, nullptr, 0), SEQEDGE_ERR_ARGUMENT);
  EXPECT_STATUS(seqedge_prefill(model, state, tokens.data(), n, all.data(), n * vocab - 1), SEQEDGE_ERR_ARGUMENT);
  EXPECT_STATUS(seqedge_prefill(model, state, tokens.data(), n, nullptr, vocab), SEQEDGE_ERR_ARGUMENT);
  EXPECT_STATUS(seqedge_prefill(model, nullptr, tokens.data(), n, nullptr, 0), SEQEDGE_ERR_ARGUMENT);
  EXPECT_STATUS(seqedge_prefill(nullptr, state, tokens.data(), n, nullptr, 0), SEQEDGE_ERR_ARGUMENT);
  std::vector<std::int64_t> bad(tokens);
  bad.back() = info.vocab_size;
  EXPECT_STATUS(seqedge_prefill(model, state, bad.data(), n, nullptr, 0), SEQEDGE_ERR_TOKEN);
  bad.back() = -1;
  EXPECT_STATUS(seqedge_prefill(model, state, bad.data(), n, nullptr, 0), SEQEDGE_ERR_TOKEN);
  EXPECT_STATUS(seqedge_step(model, state, info.vocab_size, logits.data(), vocab), SEQEDGE_ERR_TOKEN);
  EXPECT_STATUS(seqedge_step(model, state, 1, logits.data(), vocab + 1), SEQEDGE_ERR_ARGUMENT);
  EXPECT_STATUS(seqedge_step(model, state, 1, nullptr, vocab), SEQEDGE_ERR_ARGUMENT);

  // every token's logits, then the last token's only, from fresh states: the same numbers
  EXPECT_OK(seqedge_prefill(model, state, tokens.data(), n, all.data(), all.size()));
  seqedge_state* fresh = nullptr;
  EXPECT_OK(seqedge_init_state(model, &fresh));
  EXPECT_OK(seqedge_prefill(model, fresh, tokens.data(), n, last.data(), vocab));
  EXPECT(max_diff(last, std::vector<float>(all.end() - vocab, all.end())) == 0);
  for (float v : all) EXPECT(std::isfinite(v));
  // token by token agrees with the chunked prefill to float32 rounding
  seqedge_state* stepped = nullptr;
  EXPECT_OK(seqedge_init_state(model, &stepped));
  float worst = 0;
  for (std::size_t t = 0; t < n; ++t) {
    EXPECT_OK(seqedge_step(model, stepped, tokens[t], logits.data(), vocab));
    worst = std::fmax(worst, max_diff(logits, std::vector<float>(all.begin() + t * vocab, all.begin() + (t + 1) * vocab)));
  }
  EXPECT(worst < 1e-4f);

  // save, load, continue: identical to continuing the original
  const std::string path = (scratch / "sub" / "state.safetensors").string();
  EXPECT_OK(seqedge_state_save(model, state, path.c_str()));
  seqedge_state* loaded = nullptr;
  EXPECT_OK(seqedge_state_load(model, path.c_str(), &loaded));
  std::vector<float> a(vocab), b(vocab);
  EXPECT_OK(seqedge_step(model, state, 42, a.data(), vocab));
  EXPECT_OK(seqedge_step(model, loaded, 42, b.data(), vocab));
  EXPECT(max_diff(a, b) == 0);
  seqedge_state* copy = nullptr;
  EXPECT_OK(seqedge_state_copy(loaded, &copy));
  EXPECT_OK(seqedge_step(model, copy, 7, a.data(), vocab));
  EXPECT_OK(seqedge_step(model, loaded, 7, b.data(), vocab));
  EXPECT(max_diff(a, b) == 0);

  test_state_files(model, info, state, path, scratch);

  for (seqedge_state* s : {state, fresh, stepped, loaded, copy}) seqedge_state_free(s);
  seqedge_state_free(nullptr);
}

// seqedge_run_buffers on caller-owned buffers: the same numbers as seqedge_step / seqedge_prefill on a
// seqedge_state, in place (state_out == state_in) or into other buffers; bad input writes nothing.
void test_run_buffers(seqedge_model* model, const seqedge_info& info) {
  const std::size_t vocab = static_cast<std::size_t>(info.vocab_size);
  const std::size_t chunk = static_cast<std::size_t>(info.chunk_size);
  const std::size_t n_state = static_cast<std::size_t>(info.num_state_tensors);
  std::vector<std::vector<float>> in(n_state), out(n_state);
  std::int64_t total = 0;
  for (std::size_t i = 0; i < n_state; ++i) {
    std::int64_t numel = 0;
    EXPECT_OK(seqedge_get_state_numel(model, static_cast<std::int64_t>(i), &numel));
    in[i].assign(static_cast<std::size_t>(numel), 0.0f);
    out[i].assign(static_cast<std::size_t>(numel), NAN);
    total += numel;
  }
  EXPECT(total * static_cast<std::int64_t>(sizeof(float)) == info.state_bytes);
  std::int64_t numel = 0;
  EXPECT_STATUS(seqedge_get_state_numel(model, info.num_state_tensors, &numel), SEQEDGE_ERR_ARGUMENT);
  EXPECT_STATUS(seqedge_get_state_numel(model, -1, &numel), SEQEDGE_ERR_ARGUMENT);
  std::vector<const float*> pin;
  std::vector<float*> pout;
  for (std::size_t i = 0; i < n_state; ++i) {
    pin.push_back(in[i].data());
    pout.push_back(out[i].data());
  }
  std::vector<std::int64_t> tokens(chunk);
  for (std::size_t i = 0; i < chunk; ++i) tokens[i] = static_cast<std::int64_t>((i * 13 + 5) % 256);
  std::vector<float> logits(chunk * vocab, NAN), ref(vocab, NAN);

  // bad input: a status, and out untouched
  EXPECT_STATUS(seqedge_run_buffers(model, tokens.data(), 2, pin.data(), pout.data(), nullptr, 0),
                SEQEDGE_ERR_ARGUMENT);
  EXPECT_STATUS(seqedge_run_buffers(model, tokens.data(), 1, pin.data(), pout.data(), logits.data(), vocab - 1),
                SEQEDGE_ERR_ARGUMENT);
  EXPECT_STATUS(seqedge_run_buffers(model, tokens.data(), 1, nullptr, pout.data(), nullptr, 0), SEQEDGE_ERR_ARGUMENT);
  std::vector<const float*> holey(pin);
  holey.back() = nullptr;
  EXPECT_STATUS(seqedge_run_buffers(model, tokens.data(), 1, holey.data(), pout.data(), nullptr, 0),
                SEQEDGE_ERR_ARGUMENT);
  const std::int64_t bad = info.vocab_size;
  EXPECT_STATUS(seqedge_run_buffers(model, &bad, 1, pin.data(), pout.data(), nullptr, 0), SEQEDGE_ERR_TOKEN);
  EXPECT_STATUS(seqedge_run_buffers(nullptr, tokens.data(), 1, pin.data(), pout.data(), nullptr, 0),
                SEQEDGE_ERR_ARGUMENT);
  for (const auto& t : out) EXPECT(std::isnan(t[0]));

  // a chunk into other buffers, then a step in place: what seqedge_prefill and seqedge_step give on a state
  seqedge_state* state = nullptr;
  EXPECT_OK(seqedge_init_state(model, &state));
  std::vector<float> all(chunk * vocab);
  EXPECT_OK(seqedge_prefill(model, state, tokens.data(), chunk, all.data(), all.size()));
  EXPECT_OK(seqedge_run_buffers(model, tokens.data(), chunk, pin.data(), pout.data(), logits.data(), chunk * vocab));
  EXPECT(max_diff(logits, all) == 0);
  for (std::size_t i = 0; i < n_state; ++i) in[i] = out[i];
  EXPECT_OK(seqedge_step(model, state, 77, ref.data(), vocab));
  const std::int64_t token = 77;
  std::vector<const float*> again;
  std::vector<float*> inplace;
  for (std::size_t i = 0; i < n_state; ++i) {
    again.push_back(in[i].data());
    inplace.push_back(in[i].data());
  }
  EXPECT_OK(seqedge_run_buffers(model, &token, 1, again.data(), inplace.data(), logits.data(), vocab));
  EXPECT(max_diff(std::vector<float>(logits.begin(), logits.begin() + vocab), ref) == 0);
  // the in-place state continues like the seqedge_state
  EXPECT_OK(seqedge_step(model, state, 3, ref.data(), vocab));
  const std::int64_t three = 3;
  EXPECT_OK(seqedge_run_buffers(model, &three, 1, again.data(), inplace.data(), logits.data(), vocab));
  EXPECT(max_diff(std::vector<float>(logits.begin(), logits.begin() + vocab), ref) == 0);
  EXPECT_OK(seqedge_run_buffers(model, &three, 1, again.data(), inplace.data(), nullptr, 0));   // no logits
  seqedge_state_free(state);
}

void test_sampling_and_tokenizer(seqedge_model* model, const seqedge_info& info) {
  seqedge_sampler* sampler = nullptr;
  EXPECT_STATUS(seqedge_sampler_new(-1, 0, 1, 0, &sampler), SEQEDGE_ERR_ARGUMENT);
  EXPECT_STATUS(seqedge_sampler_new(1, -2, 1, 0, &sampler), SEQEDGE_ERR_ARGUMENT);
  EXPECT_STATUS(seqedge_sampler_new(1, 0, 0, 0, &sampler), SEQEDGE_ERR_ARGUMENT);
  EXPECT_STATUS(seqedge_sampler_new(1, 0, 1.5, 0, &sampler), SEQEDGE_ERR_ARGUMENT);
  EXPECT_STATUS(seqedge_sampler_new(NAN, 0, 1, 0, &sampler), SEQEDGE_ERR_ARGUMENT);
  std::vector<float> logits{0.1f, 3.0f, -1.0f, 3.0f, 2.9f};
  std::int64_t token = -1;
  EXPECT_OK(seqedge_sampler_new(0, 0, 1, 0, &sampler));
  EXPECT_OK(seqedge_sample(sampler, logits.data(), logits.size(), &token));
  EXPECT(token == 1);  // the first maximum, as numpy's argmax
  std::vector<float> broken{0.0f, NAN};
  EXPECT_STATUS(seqedge_sample(sampler, broken.data(), broken.size(), &token), SEQEDGE_ERR_ARGUMENT);
  EXPECT_STATUS(seqedge_sample(sampler, nullptr, 3, &token), SEQEDGE_ERR_ARGUMENT);
  seqedge_sampler_free(sampler);
  // top-k 2 keeps only the tied maxima; top-p keeps the smallest prefix reaching p
  std::vector<std::int64_t> seen(logits.size(), 0);
  EXPECT_OK(seqedge_sampler_new(1.0, 2, 1.0, 123, &sampler));
  for (int i = 0; i < 400; ++i) {
    EXPECT_OK(seqedge_sample(sampler, logits.data(), logits.size(), &token));
    if (token >= 0 && token < 5) seen[static_cast<std::size_t>(token)]++;
  }
  EXPECT(seen[1] > 100 && seen[3] > 100 && seen[0] + seen[2] + seen[4] == 0);
  seqedge_sampler_free(sampler);
  // the same seed, the same tokens
  std::vector<std::int64_t> first, second;
  for (auto* run : {&first, &second}) {
    EXPECT_OK(seqedge_sampler_new(0.9, 0, 0.95, 7, &sampler));
    for (int i = 0; i < 50; ++i) {
      EXPECT_OK(seqedge_sample(sampler, logits.data(), logits.size(), &token));
      run->push_back(token);
    }
    seqedge_sampler_free(sampler);
  }
  EXPECT(first == second);

  std::size_t n_ids = 0;
  EXPECT_OK(seqedge_encode(model, "h\xc3\xa9", 3, 1, nullptr, 0, &n_ids));
  EXPECT(n_ids == 4);
  std::vector<std::int64_t> ids(4);
  EXPECT_STATUS(seqedge_encode(model, "h\xc3\xa9", 3, 1, ids.data(), 2, &n_ids), SEQEDGE_ERR_ARGUMENT);
  EXPECT_OK(seqedge_encode(model, "h\xc3\xa9", 3, 1, ids.data(), ids.size(), &n_ids));
  EXPECT(ids == (std::vector<std::int64_t>{info.bos_id, 'h', 0xc3, 0xa9}));
  char bytes[4];
  std::size_t n_bytes = 9;
  EXPECT_OK(seqedge_token_bytes(model, info.eos_id, bytes, sizeof bytes, &n_bytes));
  EXPECT(n_bytes == 0);
  EXPECT_OK(seqedge_token_bytes(model, 0xa9, bytes, sizeof bytes, &n_bytes));
  EXPECT(n_bytes == 1 && static_cast<unsigned char>(bytes[0]) == 0xa9);
  EXPECT_STATUS(seqedge_token_bytes(model, info.vocab_size, bytes, sizeof bytes, &n_bytes), SEQEDGE_ERR_TOKEN);
  EXPECT_STATUS(seqedge_token_bytes(model, -3, bytes, sizeof bytes, &n_bytes), SEQEDGE_ERR_TOKEN);
}

}  // namespace

// A prompt and a few steps' logits of `model` (the thread tests compare them across thread choices).
std::vector<float> stream_logits(seqedge_model* model, const seqedge_info& info) {
  const std::size_t vocab = static_cast<std::size_t>(info.vocab_size);
  std::vector<std::int64_t> prompt(static_cast<std::size_t>(info.chunk_size + 3));
  for (std::size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<std::int64_t>((i * 53 + 7) % 256);
  std::vector<float> out(4 * vocab, NAN);
  seqedge_state* state = nullptr;
  EXPECT_OK(seqedge_init_state(model, &state));
  EXPECT_OK(seqedge_prefill(model, state, prompt.data(), prompt.size(), out.data(), vocab));
  for (std::size_t k = 1; k < 4; ++k) EXPECT_OK(seqedge_step(model, state, 40 + k, out.data() + k * vocab, vocab));
  seqedge_state_free(state);
  return out;
}

// seqedge_open_threads: the calling thread, the pool where its size is asked for, and counts it cannot give.
void test_threads(const fs::path& artifact, seqedge_model* model, const seqedge_info& info) {
  seqedge_model* other = reinterpret_cast<seqedge_model*>(&failures);
  EXPECT_STATUS(seqedge_open_threads(artifact.c_str(), nullptr, -1, &other), SEQEDGE_ERR_ARGUMENT);
  EXPECT(other == nullptr);
  EXPECT_STATUS(seqedge_open_threads(artifact.c_str(), nullptr, 4096, &other), SEQEDGE_ERR_ARGUMENT);
  EXPECT(std::string(seqedge_last_error()).find("thread pool") != std::string::npos);
  EXPECT(info.threads == 1);  // a model this small runs on the calling thread unless asked otherwise
  const std::vector<float> reference = stream_logits(model, info);
  for (int threads : {1, 2}) {
    // 2 is the pool on a two-core machine; elsewhere it is refused, as any count but 1 and the pool's size
    seqedge_status status = seqedge_open_threads(artifact.c_str(), nullptr, threads, &other);
    if (status != SEQEDGE_OK) {
      EXPECT(threads != 1 && status == SEQEDGE_ERR_ARGUMENT);
      continue;
    }
    seqedge_info got{};
    EXPECT_OK(seqedge_get_info(other, &got));
    EXPECT(got.threads == threads);
    EXPECT(max_diff(stream_logits(other, got), reference) <= 1e-5f);
    EXPECT_OK(seqedge_close(other));
  }
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s ARTIFACT_DIR (an artifact with an executorch fp32 variant)\n", argv[0]);
    return 2;
  }
  seqedge_set_runtime_logging(0);
  const fs::path artifact = argv[1];
  char templ[] = "/tmp/seqedge-c-api-XXXXXX";
  if (mkdtemp(templ) == nullptr) return 2;
  const fs::path scratch = templ;

  test_open_errors(artifact, scratch);
  seqedge_model* model = nullptr;
  EXPECT_OK(seqedge_open(artifact.c_str(), nullptr, &model));
  if (model != nullptr) {
    seqedge_info info{};
    EXPECT_OK(seqedge_get_info(model, &info));
    EXPECT(std::string(info.variant) == "executorch/fp32");
    EXPECT(info.state_bytes > 0 && info.num_state_tensors > 0);
    test_calls(model, info, scratch);
    test_run_buffers(model, info);
    test_sampling_and_tokenizer(model, info);
    test_threads(artifact, model, info);
    EXPECT_OK(seqedge_close(model));
  }
  EXPECT_OK(seqedge_close(nullptr));
  fs::remove_all(scratch);
  std::printf("%s: %d failure(s)\n", argv[0], failures);
  return failures == 0 ? 0 : 1;
}
