"""Runtimes: torch and onnxruntime sessions, IOBinding state reuse, state handoff, bad input, broken artifacts."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from _artifacts import onnx_artifact, ort_artifact, reference, tiny_model

import seqedge
from seqedge.artifact import ArtifactError
from seqedge.evaluate.parity import check_session, text_tokens
from seqedge.runtimes import RuntimeUnavailable, State


@pytest.fixture
def artifact(tmp_path_factory):
    return onnx_artifact(tmp_path_factory, "delta")


@pytest.fixture
def copy_of(tmp_path, artifact):
    """A private copy of the artifact that a test may damage."""
    def make():
        dst = tmp_path / "copy"
        shutil.copytree(artifact, dst)
        return dst
    return make


def test_torch_runtime_parity(artifact):
    """The torch runtime (float32) over 256 tokens (prefill + steps) is within the fp32 budget."""
    session = seqedge.load(artifact, "torch")
    tokens = text_tokens(256)
    report = check_session(session, tokens, prefill=128, reference=reference(artifact, tokens, 128))
    assert report.passed and report.max_abs <= 1e-4, report.failures
    assert report.state_rel_err < 1e-5


def test_torch_runtime_float64_is_the_reference(artifact):
    """float64 through a Session == the reference, up to the float32 rounding of the state that a portable
    State holds between calls (the reference keeps it in float64)."""
    session = seqedge.load(artifact, "torch", dtype="float64")
    tokens = text_tokens(64)
    report = check_session(session, tokens, prefill=40, reference=reference(artifact, tokens, 40))
    assert report.max_abs < 1e-7 and report.state_rel_err < 1e-6


@pytest.mark.parametrize("io_binding", [True, False])
def test_iobinding_reuses_state_and_matches_copies(artifact, io_binding):
    """A step loop re-binds the previous OrtValues; feeding copies instead gives bit-identical logits. Without
    IOBinding (the CPU default) nothing is re-bound and the logits are the same."""
    session = seqedge.load(artifact, "onnxruntime", io_binding=io_binding)
    other = seqedge.load(artifact, "onnxruntime", io_binding=True)
    tokens = text_tokens(40)
    s1, s2 = session.init_state(), other.init_state()
    l1, s1 = session.prefill(tokens[None, :33], s1)
    l2, s2 = other.prefill(tokens[None, :33], s2)
    before, before_other = session.backend.reused_state_binds, other.backend.reused_state_binds
    assert before == (2 if io_binding else 0)            # prefill of 33 = chunk, chunk (re-bound), step (re-bound)
    for t in tokens[33:]:
        l1, s1 = session.step([t], s1)
        s2 = s2.with_tensors([np.array(a, copy=True) for a in s2.tensors])   # fresh arrays: bound from numpy
        l2, s2 = other.step([t], s2)
        np.testing.assert_array_equal(l1, l2)
    assert session.backend.reused_state_binds - before == (len(tokens) - 33 if io_binding else 0)
    assert other.backend.reused_state_binds == before_other     # fresh arrays are never mistaken for its own
    with pytest.raises(ValueError):
        s1.tensors[0][0, 0, 0] = 1.0                       # handed-out state is read-only: never mutated in place


def test_state_handoff_between_runtimes(tmp_path, artifact):
    """Prefill in onnxruntime, State.save, State.load, resume in torch: the next logits agree (and vice versa)."""
    tokens = text_tokens(70)
    ort_s, torch_s = seqedge.load(artifact, "onnxruntime"), seqedge.load(artifact, "torch")
    for first, second in ((ort_s, torch_s), (torch_s, ort_s)):
        _, state = first.prefill(tokens[None, :69], first.init_state())
        state.save(tmp_path / "state.safetensors")
        loaded = State.load(tmp_path / "state.safetensors")
        resumed, _ = second.step(tokens[69:70], loaded)
        direct, _ = first.step(tokens[69:70], state)
        full, _ = second.prefill(tokens[None, :70], second.init_state())
        np.testing.assert_allclose(resumed, direct, atol=1e-5)
        np.testing.assert_allclose(resumed[0], full[0, -1], atol=1e-5)


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
@pytest.mark.parametrize("length", [1, 31, 32, 70])     # chunk 16: one step; a chunk + steps; chunks only; both
def test_prefill_last_logits_only(runtime, length, artifact):
    """``logits="last"`` gives the last row of the full logits and the same state, for any prompt length. ONNX
    Runtime runs those chunks with the head on their last row (``chunk_last``): the same head on one row, equal up
    to float rounding."""
    session = seqedge.load(artifact, runtime)
    assert ("chunk_last" in getattr(session.backend, "entries", ())) == (runtime == "onnxruntime")
    tokens = text_tokens(length)[None]
    full, full_state = session.prefill(tokens, session.init_state(1))
    last, last_state = session.prefill(tokens, session.init_state(1), logits="last")
    assert last.shape == (1, session.vocab_size) and last.base is None      # its own memory, not a chunk's view
    np.testing.assert_allclose(last, full[:, -1], rtol=0, atol=1e-6 * np.abs(full).max())
    for a, b in zip(last_state.numpy(), full_state.numpy()):
        np.testing.assert_array_equal(a, b)
    then, _ = session.step([7], last_state)            # sealed as the session's own
    want, _ = session.step([7], full_state)
    np.testing.assert_array_equal(then, want)


def test_generate_matches_torch_model(artifact):
    model = tiny_model("delta")
    prompt = list(b"import os\n")
    want = list(model.generate(prompt, 12))
    for runtime in ("onnxruntime", "torch"):
        assert list(seqedge.load(artifact, runtime).generate(prompt, 12)) == want


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_bad_input_leaves_session_usable(runtime, artifact, tmp_path):
    """Each bad call raises a clear ValueError/TypeError; afterwards the session gives the same logits as before."""
    session = seqedge.load(artifact, runtime)
    state = session.init_state(1)
    good, _ = session.step([65], state)
    foreign = seqedge.load(onnx_artifact_other(tmp_path), "torch").init_state(1)
    cases = [
        (lambda: session.step([259], state), "token ids must lie in"),
        (lambda: session.step([-1], state), "token ids must lie in"),
        (lambda: session.step(np.array([1.5]), state), "must be integers"),
        (lambda: session.step([[1]], state), "shape"),
        (lambda: session.step([1, 2], state), "batch"),
        (lambda: session.prefill(np.zeros((2, 20), np.int64), state), "batch"),
        (lambda: session.step([1], foreign), "another model"),
        (lambda: session.step([1], [np.zeros(1)]), "State"),
        (lambda: session.init_state(0), "batch_size"),
        (lambda: session.prefill([[1, 2]], state, logits="first"), "logits must be"),
        (lambda: session.prefill(np.zeros((1, 0), np.int64), state, logits="last"), "at least one token"),
    ]
    for call, words in cases:
        with pytest.raises((ValueError, TypeError), match=words):
            call()
        again, _ = session.step([65], state)
        np.testing.assert_array_equal(again, good)


def onnx_artifact_other(tmp_path):
    """A torch-only artifact (no target) of a model with another config, hence another fingerprint."""
    from _artifacts import export_config

    from seqedge.export.api import export_model
    from seqedge.model import SequentialAttentionModel

    path = tmp_path / "other"
    if not path.exists():
        config = type(export_config("gated"))(**{**export_config("gated").to_dict(), "num_layers": 1})
        export_model(SequentialAttentionModel(config).eval(), path, [], progress=False)
    return path


def test_other_format_version_is_refused(copy_of):
    path = copy_of()
    data = json.loads((path / "manifest.json").read_text())
    data["format_version"] = 99
    (path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="format version 99"):
        seqedge.load(path, "onnxruntime")


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
@pytest.mark.parametrize("runtime,file", [("onnxruntime", "onnx/fp32/step.onnx"),
                                          ("torch", "torch/fp32/model.safetensors")])
def test_damaged_file_fails_hash_check(copy_of, damage, runtime, file):
    path = copy_of()
    target = path / file
    blob = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(blob[: len(blob) // 2])
    else:
        i = len(blob) // 2
        target.write_bytes(blob[:i] + bytes([blob[i] ^ 0xFF]) + blob[i + 1:])
    with pytest.raises(ArtifactError, match="sha256"):
        seqedge.load(path, runtime)


def test_missing_runtime_library(monkeypatch, artifact):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)      # import onnxruntime -> ImportError
    with pytest.raises(ImportError, match="pip install onnxruntime"):
        seqedge.load(artifact, "onnxruntime")


def test_unknown_runtime_and_variant(artifact):
    with pytest.raises(ValueError, match="valid runtimes are"):
        seqedge.load(artifact, "tflite")
    with pytest.raises(ArtifactError, match="no onnx/bf16"):
        seqedge.load(artifact, "onnxruntime", quantization="bf16")


def test_missing_provider_says_so(artifact):
    with pytest.raises(RuntimeUnavailable, match="not available here"):
        seqedge.load(artifact, "onnxruntime", providers=["TensorrtExecutionProvider"])


def test_threads_per_entry_point(tmp_path_factory):
    """A small model's step runs on one thread in the fused graphs and on ONNX Runtime's default (every core) in
    the portable ones, its chunks on the default in both; a count asked for applies to both entry points; the
    sessions are built with what describe() reports."""
    both = ort_artifact(tmp_path_factory, "delta")
    for runtime, step_threads in (("onnxruntime-fused", 1), ("onnxruntime", 0)):       # 0: ONNX Runtime's default
        session = seqedge.load(both, runtime)
        described = session.describe()
        assert described["chunk_threads"].startswith("onnxruntime default")
        if step_threads:
            assert described["threads"] == 1
        else:
            assert described["threads"].startswith("onnxruntime default")
        steps = session.backend.sessions
        assert steps["step"].get_session_options().intra_op_num_threads == step_threads
        assert steps["chunk"].get_session_options().intra_op_num_threads == 0
    two = seqedge.load(both, "onnxruntime", threads=2)
    assert two.describe()["threads"] == two.describe()["chunk_threads"] == 2
    assert all(s.get_session_options().intra_op_num_threads == 2 for s in two.backend.sessions.values())
    tokens = np.arange(40).reshape(1, 40) % 256
    np.testing.assert_allclose(session.prefill(tokens, session.init_state(1))[0],
                               two.prefill(tokens, two.init_state(1))[0], rtol=1e-5, atol=1e-5)
