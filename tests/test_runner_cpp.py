"""The C++ runner (runners/cpp) against the Python ExecuTorch session on the same exported programs.

The runner is built once per session with CMake against the executorch wheel's C++ runtime, with
AddressSanitizer/UBSan on, so every run below (the CLI and the C API unit tests) is also a memory check. The
artifacts are the ones tests/test_executorch.py exports (shared through its cache: lowering is the slow part).

What is asserted, on a 256-token stream (prefill through chunk calls and steps, then steps; state carried):
- fp32: max |logit diff| <= 1e-4 and top-1 100% against the Python session, and the float64 reference's fp32
  budget; int8: the same program in Python within 1e-4, and the float64 reference within the int8 budget of
  runtimes/parity.py.
- a state saved in Python continues in C++, and the state C++ saves continues in Python, matching an
  uninterrupted Python stream;
- greedy text equals the Python session's greedy text; seeded sampling repeats;
- bad input (a tampered program, a state of another model, token ids out of range) fails with a message and
  the documented exit code, never a crash.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("executorch.runtime", reason="ExecuTorch is not installed (pip install executorch==1.5.1 "
                                                  "torchao==0.18.0)")
pytest.importorskip("torchao", reason="torchao is not installed (pip install executorch==1.5.1 torchao==0.18.0)")

import test_executorch  # noqa: E402  (its export cache: each program is lowered once per session)

from seqedge.runtimes import load  # noqa: E402
from seqedge.evaluate.native_runner import build_runner  # noqa: E402
from seqedge.evaluate.parity import StreamResult, compare, reference_stream, run_stream  # noqa: E402
from seqedge.state import State  # noqa: E402
from seqedge.tokenizer import ByteTokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "runners" / "cpp"
BUILD = REPO / "build" / "runner-cpp-asan"     # reused between sessions: CMake rebuilds only what changed
N_TOKENS, PREFILL = 256, 200                    # 200 = 12 chunk calls of 16 + 8 steps, then 56 steps
# LeakSanitizer stays on; ExecuTorch's uninstrumented libraries are fine under ASan
ENV = {**os.environ, "ASAN_OPTIONS": "abort_on_error=0:detect_leaks=1", "UBSAN_OPTIONS": "print_stacktrace=1"}


def _missing_toolchain() -> str | None:
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install -y cmake g++ nlohmann-json3-dev libssl-dev libcli11-dev)"
    return None


@pytest.fixture(scope="session")
def runner() -> dict[str, Path]:
    """The built ``seqedge-run`` and ``seqedge-c-api-test`` (ASan/UBSan), configured against the executorch wheel."""
    reason = _missing_toolchain()
    if reason:
        print(f"skipping the C++ runner tests: {reason}")
        pytest.skip(reason)
    from filelock import FileLock

    BUILD.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(BUILD) + ".lock"):     # pytest-xdist workers share the build directory
            build_runner(SOURCE, BUILD, ("-DSEQEDGE_ASAN=ON", "-DCMAKE_BUILD_TYPE=RelWithDebInfo"))
    except RuntimeError as err:
        pytest.fail(str(err))
    return {"run": BUILD / "seqedge-run", "c_api_test": BUILD / "seqedge-c-api-test"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``exported(scheme)`` -> (artifact dir, model): the delta-rule one-layer program test_executorch exports."""
    cache = test_executorch._ARTIFACTS

    def get(scheme: str):
        key = ("delta", scheme, 1)
        if key not in cache:
            from seqedge.export.base import ExportContext, get_target
            from seqedge.export.quantization import QuantizationRecipe

            model = test_executorch.tiny_model("delta")
            root = tmp_path_factory.mktemp(f"et-delta-{scheme}-1")
            variant = get_target("executorch").export(ExportContext(model, root, QuantizationRecipe(scheme)))
            cache[key] = (test_executorch.write_artifact(root, model, [variant]), variant, model)
        artifact, _, model = cache[key]
        return artifact, model

    return get


def run_cli(runner, *args, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(runner["run"]), *map(str, args)], capture_output=True, env=ENV, timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(f"seqedge-run {' '.join(map(str, args))} exited {done.returncode}:\n"
                             f"{done.stderr.decode(errors='replace')[-4000:]}")
    return done


def stream_tokens(seed: int = 11) -> np.ndarray:
    """Byte tokens with the specials mixed in (ids 0..258)."""
    return np.random.default_rng(seed).integers(0, 259, N_TOKENS)


def cpp_stream(runner, artifact: Path, tmp_path: Path, tokens: np.ndarray, prefill: int, scheme: str = "fp32",
               state_in: Path | None = None, state_out: Path | None = None) -> np.ndarray:
    """Logits ``[T, V]`` of ``tokens`` through seqedge-run (``prefill`` of them through seqedge_prefill)."""
    token_file, logits_file = tmp_path / "tokens.txt", tmp_path / "logits.bin"
    token_file.write_text(" ".join(str(int(t)) for t in tokens))
    args = [artifact, "-q", scheme, "--dump-logits", logits_file, "--tokens", token_file, "--prefill", prefill]
    args += ["--state-in", state_in] if state_in else []
    args += ["--state-out", state_out] if state_out else []
    run_cli(runner, *args)
    return np.fromfile(logits_file, dtype=np.float32).reshape(len(tokens), -1)


def test_c_api_unit_tests_under_asan(runner, exported):
    artifact, _ = exported("none")
    done = subprocess.run([str(runner["c_api_test"]), str(artifact)], capture_output=True, text=True, env=ENV,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-6000:]
    assert "0 failure(s)" in done.stdout


@pytest.mark.parametrize("scheme", ["none", pytest.param("int8", marks=pytest.mark.slow)])
def test_logits_match_python_session(runner, exported, tmp_path, scheme):
    artifact, model = exported(scheme)
    tag = "fp32" if scheme == "none" else scheme
    tokens = stream_tokens()
    ours = cpp_stream(runner, artifact, tmp_path, tokens, PREFILL, tag)
    python = run_stream(load(artifact, "executorch", quantization=tag), tokens, PREFILL)
    assert np.isfinite(ours).all()
    assert np.abs(ours - python.logits).max() <= 1e-4
    assert (ours.argmax(-1) == python.logits.argmax(-1)).all()
    # and the float64 reference, within the format's budget (runtimes/parity.py)
    report = compare(StreamResult(ours.astype(np.float64), python.state), reference_stream(model, tokens, PREFILL),
                     tokens, prefill=PREFILL, tag=tag)
    assert report.passed, report.failures


def test_single_stream_program(runner, tmp_path_factory, tmp_path):
    """``max_batch=1`` (``seqedge export --max-batch 1``, what docs/embedding.md tells an app to export): a static
    batch-1 program; the runner and the Python session agree on it, and the session refuses a batch of 2."""
    from seqedge.export.base import ExportContext, get_target
    from seqedge.export.quantization import QuantizationRecipe

    model = test_executorch.tiny_model("gated")
    root = tmp_path_factory.mktemp("et-gated-b1")
    variant = get_target("executorch").export(ExportContext(model, root, QuantizationRecipe("none"), max_batch=1))
    assert variant.info["batch"] == {"min": 1, "max": 1}
    artifact = test_executorch.write_artifact(root, model, [variant])
    tokens = stream_tokens(seed=3)
    ours = cpp_stream(runner, artifact, tmp_path, tokens, PREFILL)
    session = load(artifact, "executorch")
    python = run_stream(session, tokens, PREFILL)
    assert np.abs(ours - python.logits).max() <= 1e-4
    assert (ours.argmax(-1) == python.logits.argmax(-1)).all()
    state = session.init_state(2)
    with pytest.raises(ValueError, match=r"batch size 2 is outside the range \[1, 1\]"):
        session.step(np.array([1, 2]), state)


def test_a_model_larger_than_its_byte_tokenizer_runs_every_id(runner, tmp_path_factory, tmp_path):
    """An imported checkpoint without a tokenizer of its own: the byte tokenizer's 259 ids inside a larger
    vocabulary. As in Python, every model id runs (the logits match the session's), and decoding an id past the
    tokenizer's is refused."""
    from seqedge.export.base import ExportContext, get_target
    from seqedge.export.quantization import QuantizationRecipe

    model = test_executorch.tiny_model("gated", vocab_size=300)
    root = tmp_path_factory.mktemp("et-gated-vocab300")
    variant = get_target("executorch").export(ExportContext(model, root, QuantizationRecipe("none"), max_batch=1))
    artifact = test_executorch.write_artifact(root, model, [variant])
    session = load(artifact, "executorch")
    assert session.vocab_size == 300 and session.tokenizer.vocab_size == 259
    tokens = np.random.default_rng(5).integers(0, 300, 48)
    ours = cpp_stream(runner, artifact, tmp_path, tokens, 32)
    python = run_stream(session, tokens, 32)
    assert ours.shape == (48, 300) and np.abs(ours - python.logits).max() <= 1e-4
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 259\)"):
        session.tokenizer.decode([299])
    # greedy text: a byte decodes, an id past the tokenizer's stops the stream with the same message
    first = int(run_stream(session, np.array([256, ord("x")]), 2).logits[-1].argmax())
    done = run_cli(runner, artifact, "-p", "x", "-n", 1, "--temperature", 0, check=False)
    if first < 259:
        assert done.returncode == 0, done.stderr
    else:
        assert done.returncode == 2 and b"outside the vocabulary [0, 259)" in done.stderr


def test_huge_pages_are_advised_unless_turned_off_and_change_no_value(runner, exported, tmp_path):
    artifact, _ = exported("none")
    args = [artifact, "--bench", "--json", "--contexts", "0", "--steps", "4", "--warmup", "1", "--prefill-tokens",
            "16", "--stepwise-tokens", "4", "--ttft-prompt", "4"]
    pages = json.loads(run_cli(runner, *args).stdout.decode().strip().splitlines()[-1])["huge_pages"]
    assert set(pages) == {"advised_bytes", "huge_bytes", "reason"}
    if pages["reason"] is None:
        assert pages["advised_bytes"] % (2 << 20) == 0 and pages["huge_bytes"] >= 0
    off = json.loads(run_cli(runner, *args, "--no-huge-pages").stdout.decode().strip().splitlines()[-1])
    assert off["huge_pages"] == {"advised_bytes": 0, "huge_bytes": 0, "reason": "turned off"}
    assert "--no-huge-pages" in run_cli(runner, "--help").stdout.decode()
    tokens = stream_tokens()[:40]
    (tmp_path / "tokens.txt").write_text(" ".join(map(str, tokens)))
    dumps = []
    for extra in ([], ["--no-huge-pages"]):
        out = tmp_path / f"logits{len(dumps)}.bin"
        run_cli(runner, artifact, "--dump-logits", out, "--tokens", tmp_path / "tokens.txt", "--prefill", 24, *extra)
        dumps.append(np.fromfile(out, np.float32))
    assert np.array_equal(*dumps)


def test_state_moves_between_python_and_cpp(runner, exported, tmp_path):
    """Python prefills and saves; C++ continues and saves; Python continues: one uninterrupted stream."""
    artifact, _ = exported("none")
    session = load(artifact, "executorch")
    tokens = stream_tokens(seed=5)
    a, b, cpp_prefill = 100, 180, 37
    logits, state = session.prefill(tokens[None, :a], session.init_state(1))
    state.save(tmp_path / "python.safetensors")
    ours = cpp_stream(runner, artifact, tmp_path, tokens[a:b], cpp_prefill, state_in=tmp_path / "python.safetensors",
                      state_out=tmp_path / "cpp.safetensors")
    resumed = State.load(tmp_path / "cpp.safetensors")
    assert resumed.fingerprint == session.fingerprint
    tail, resumed = session.prefill(tokens[None, b:], resumed)

    # the same calls (prefill, prefill, steps, prefill) without leaving Python
    pieces = [logits[0]]
    python_logits, python_state = session.prefill(tokens[None, a:a + cpp_prefill], state)
    pieces.append(python_logits[0])
    for t in range(a + cpp_prefill, b):
        step_logits, python_state = session.step(tokens[t:t + 1], python_state)
        pieces.append(step_logits)
    python_logits, python_state = session.prefill(tokens[None, b:], python_state)
    pieces.append(python_logits[0])
    assert np.abs(np.concatenate([logits[0], ours, tail[0]]) - np.concatenate(pieces)).max() <= 1e-5
    for x, y in zip(resumed.numpy(), python_state.numpy()):
        assert np.abs(x - y).max() <= 1e-6


def test_greedy_text_matches_python(runner, exported):
    artifact, _ = exported("none")
    prompt, n = "The state is fixed in size; ", 48
    tok = ByteTokenizer()
    ids = []
    for token in load(artifact, "executorch").generate(tok.encode(prompt, add_bos=True), n):
        ids.append(token)
        if token == tok.eos_id:
            break
    done = run_cli(runner, artifact, "-p", prompt, "-n", n, "--temperature", 0)
    assert done.stdout == prompt.encode() + tok.decode_bytes(ids) + b"\n"


def test_sampling_is_seeded(runner, exported):
    artifact, _ = exported("none")
    runs = [run_cli(runner, artifact, "-p", "abc", "-n", 40, "--temperature", 1.5, "--top-k", 50, "--top-p", 0.9,
                    "--seed", seed).stdout for seed in (3, 3, 4)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    greedy = run_cli(runner, artifact, "-p", "abc", "-n", 40, "--temperature", 0).stdout
    assert run_cli(runner, artifact, "-p", "abc", "-n", 40, "--temperature", 2, "--top-k", 1,
                   "--seed", 9).stdout == greedy


def test_bad_input_fails_cleanly(runner, exported, tmp_path):
    artifact, model = exported("none")
    session = load(artifact, "executorch")
    # a state of another model: same layout, another fingerprint
    foreign = State(session.init_state(1).numpy(), session.specs, "0" * 16)
    foreign.save(tmp_path / "foreign.safetensors")
    done = run_cli(runner, artifact, "-p", "x", "-n", 2, "--state-in", tmp_path / "foreign.safetensors", check=False)
    assert done.returncode == 1 and b"another model" in done.stderr
    # a state of two sequences: this runner holds one
    session.init_state(2).save(tmp_path / "batch2.safetensors")
    done = run_cli(runner, artifact, "-p", "x", "-n", 2, "--state-in", tmp_path / "batch2.safetensors", check=False)
    assert done.returncode == 1 and b"batch 2" in done.stderr
    # token ids out of range
    (tmp_path / "bad.txt").write_text("1 2 259")
    done = run_cli(runner, artifact, "--dump-logits", tmp_path / "l.bin", "--tokens", tmp_path / "bad.txt",
                   check=False)
    assert done.returncode == 2 and b"outside the vocabulary" in done.stderr
    # a tampered program
    copy = tmp_path / "tampered"
    shutil.copytree(artifact, copy)
    program = next(copy.rglob("*.pte"))
    data = bytearray(program.read_bytes())
    data[len(data) // 2] ^= 0xFF
    program.write_bytes(bytes(data))
    done = run_cli(runner, copy, "-p", "x", "-n", 2, check=False)
    assert done.returncode == 1 and b"sha256" in done.stderr
    # a thread count that is neither the calling thread nor the process's pool
    done = run_cli(runner, artifact, "-p", "x", "-n", 2, "--threads", 4096, check=False)
    assert done.returncode == 2 and b"thread pool" in done.stderr
    # usage errors
    assert run_cli(runner, artifact, "-p", "x", "--top-p", 0, check=False).returncode == 2
    assert run_cli(runner, artifact, "-p", "x", "--threads", -1, check=False).returncode == 2
    assert run_cli(runner, artifact, check=False).returncode == 2


def test_a_tokenizer_json_artifact_runs_token_ids_and_refuses_text_in_one_line(runner, exported, tmp_path):
    artifact, _ = exported("none")
    copy = tmp_path / "hf-tokenizer"
    shutil.copytree(artifact, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["tokenizer"] = {"type": "hf-tokenizers", "bos_id": None, "eos_id": 3, "pad_id": 3, "stop_ids": [3],
                             "vocab_size": 200}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    done = run_cli(runner, copy, "-p", "x", "-n", 2, check=False)
    error = [line for line in done.stderr.decode().splitlines() if line.startswith("seqedge-run: error")]
    assert done.returncode == 2 and len(error) == 1 and "tokenizer is type 'hf-tokenizers'" in error[0], error
    tokens = stream_tokens()[:40]
    ours = cpp_stream(runner, copy, tmp_path, tokens, 32)
    want = cpp_stream(runner, artifact, tmp_path, tokens, 32)
    assert np.array_equal(ours, want)


@pytest.fixture(scope="session")
def library() -> Path:
    """``libseqedge.so`` built without sanitizers (a Python process cannot load an ASan library), for
    ``load(..., "executorch", library=...)``."""
    reason = _missing_toolchain()
    if reason:
        print(f"skipping the C++ library tests: {reason}")
        pytest.skip(reason)
    from filelock import FileLock

    build = REPO / "build" / "runner-cpp-release"
    with FileLock(str(build) + ".lock"):
        try:
            build_runner(SOURCE, build)
        except RuntimeError as err:
            pytest.fail(str(err))
    return build / "libseqedge.so"


def test_the_library_runs_a_python_session_like_the_bindings(library, exported):
    """``load(..., "executorch", library=...)``: the same program through the C API on numpy buffers gives the
    pybindings' logits and states: prefill (chunks and steps) of one and of two sequences, plain and donated
    steps, a batch of three rows (one C call per row) and a state handed between the two sessions either way."""
    artifact, _ = exported("none")
    python, native = load(artifact, "executorch"), load(artifact, "executorch", library=library)
    assert native.describe()["library"].startswith("seqedge C++ runner")
    tokens = stream_tokens(seed=7)
    a, sa = python.prefill(tokens[None, :PREFILL], python.init_state(1))
    b, sb = native.prefill(tokens[None, :PREFILL], native.init_state(1))
    assert np.abs(a - b).max() <= 1e-6
    for i, t in enumerate(tokens[PREFILL:]):
        donate = i % 2 == 1
        a, sa = python.step(np.array([t]), sa, donate=donate)
        b, sb = native.step(np.array([t]), sb, donate=donate)
        assert np.abs(a - b).max() <= 1e-6
    for x, y in zip(sa.numpy(), sb.numpy()):
        assert np.abs(x - y).max() <= 1e-6
    # a state made by one session continues in the other
    a, _ = python.step(tokens[:1], sb)
    b, _ = native.step(tokens[:1], sa)
    assert np.abs(a - b).max() <= 1e-6
    # two sequences through prefill: chunk calls and steps, one C call per row each
    pair = np.stack([tokens[:40], tokens[40:80]])
    a, s2a = python.prefill(pair, python.init_state(2))
    b, s2b = native.prefill(pair, native.init_state(2))
    assert np.abs(a - b).max() <= 1e-6
    for x, y in zip(s2a.numpy(), s2b.numpy()):
        assert np.abs(x - y).max() <= 1e-6
    rows = np.array([1, 120, 250])
    s3a, s3b = python.init_state(3), native.init_state(3)
    for t in range(4):
        a, s3a = python.step(rows + t if t < 3 else rows, s3a)
        b, s3b = native.step(rows + t if t < 3 else rows, s3b, donate=True)
    assert np.abs(a - b).max() <= 1e-6
    for x, y in zip(s3a.numpy(), s3b.numpy()):
        assert np.abs(x - y).max() <= 1e-6


def test_the_library_keeps_branched_states_apart_and_takes_threads_in_turn(library, exported):
    """States kept and stepped again out of order (the backend reuses two address tables per batch: a branch
    must never read or write through the other's), and two threads stepping their own states on one session
    (the model handle and token buffer are one each): the pybindings' logits and states every time."""
    artifact, _ = exported("none")
    python, native = load(artifact, "executorch"), load(artifact, "executorch", library=library)
    tokens = stream_tokens(seed=11)
    _, root_a = python.prefill(tokens[None, :20], python.init_state(1))
    _, root_b = native.prefill(tokens[None, :20], native.init_state(1))
    # root -> s1 -> s2, root -> s3 (root is no longer the last output), s1 -> s4, s2 -> s5, s5 -> s6 (last output)
    plan = [(0, 1), (1, 2), (0, 3), (1, 4), (2, 5), (5, 6)]
    states_a, states_b = {0: root_a}, {0: root_b}
    for src, dst in plan:
        t = np.array([tokens[20 + dst]])
        la, states_a[dst] = python.step(t, states_a[src])
        lb, states_b[dst] = native.step(t, states_b[src])
        assert np.abs(la - lb).max() <= 1e-6, (src, dst)
    for key, state in states_a.items():
        for x, y in zip(state.numpy(), states_b[key].numpy()):
            assert np.abs(x - y).max() <= 1e-6, key

    def run(session, state, offset, out, key):
        for t in tokens[offset:offset + 40]:
            logits, state = session.step(np.array([t]), state, donate=True)
        out[key] = (logits, state.numpy())

    expected, got = {}, {}
    for k in range(2):
        run(python, states_a[k], 100 + 50 * k, expected, k)
    threads = [threading.Thread(target=run, args=(native, states_b[k], 100 + 50 * k, got, k)) for k in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for k in range(2):
        assert np.abs(expected[k][0] - got[k][0]).max() <= 1e-6
        for x, y in zip(expected[k][1], got[k][1]):
            assert np.abs(x - y).max() <= 1e-6


def test_the_library_reuses_a_dropped_state_block_and_spares_a_kept_view(library, exported):
    """Plain steps that drop each old state write their new states into the blocks the dropped ones gave back
    (runtimes.block_pool); a view kept of an old state keeps that block out of reuse, so its values stay. The
    pybindings' logits and states every step."""
    artifact, _ = exported("none")
    python, native = load(artifact, "executorch"), load(artifact, "executorch", library=library)
    tokens = stream_tokens(seed=13)
    sa, sb = python.init_state(1), native.init_state(1)
    addresses, kept = set(), None
    for i, t in enumerate(tokens[:12]):
        a, sa = python.step(np.array([t]), sa)
        b, sb = native.step(np.array([t]), sb)
        assert np.abs(a - b).max() <= 1e-6, i
        addresses.add(sb.tensors[0].ctypes.data)
        if i == 5:
            kept, kept_values = sb.tensors[-1][0], sb.tensors[-1][0].copy()
    assert len(addresses) <= 3, "the loop's states should alternate between reused blocks"
    assert np.array_equal(kept, kept_values), "a block with a live view was written over"
    for x, y in zip(sa.numpy(), sb.numpy()):
        assert np.abs(x - y).max() <= 1e-6


def test_the_library_reports_errors_as_exceptions(library, exported, tmp_path):
    """The C API's own checks surface as Python exceptions with its message; a missing library says how to build
    one; a spent state stays spent."""
    from seqedge.runtimes.base import RuntimeUnavailable

    artifact, _ = exported("none")
    native = load(artifact, "executorch", library=library)
    state = native.init_state(1)
    with pytest.raises(ValueError, match=r"token id 259 .* outside the vocabulary \[0, 259\)"):
        native.backend.run("step", np.array([259]), state.numpy())
    with pytest.raises(ValueError, match="unknown entry point"):
        native.backend.run("decode", np.array([1]), state.numpy())
    with pytest.raises(RuntimeUnavailable, match=r"no seqedge C\+\+ library at .*cmake -S runners/cpp"):
        load(artifact, "executorch", library=tmp_path / "libseqedge.so")
    _, new = native.step(np.array([1]), state, donate=True)
    with pytest.raises(ValueError):
        native.step(np.array([1]), state)
    assert np.isfinite(native.step(np.array([2]), new)[0]).all()


def test_generate_and_serve_take_the_library(library, exported, capsys):
    """``--library`` on the command line: generate writes the pybindings' greedy text (executorch implied), serve
    opens its session on the library, and any other runtime with it is a usage error."""
    from seqedge.cli.main import main
    from seqedge.serve import ServeConfig, build_server

    artifact, _ = exported("none")
    args = ["generate", "-m", str(artifact), "-p", "def f(", "-n", "12", "--json"]
    assert main([*args, "--runtime", "executorch"]) == 0
    want = json.loads(capsys.readouterr().out)
    assert main([*args, "--library", str(library)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["text"] == want["text"] and got["tokens"] == want["tokens"] == 12
    assert main([*args, "--runtime", "onnx", "--library", str(library)]) == 2
    assert "--library runs the executorch runtime, not onnxruntime" in capsys.readouterr().err
    server = build_server(ServeConfig(str(artifact), "executorch", runtime_options={"library": str(library)}))
    assert server.session.describe()["library"].startswith("seqedge C++ runner")
