"""States are checked before any runtime sees them: finite, of this model, of the backend's dtype, real, tensors;
state files carry a checksum of their tensors; generate checks its arguments when called; permissions follow
the umask."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from _hardening import built

import seqedge
from seqedge.state import State, tensors_sha256


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return seqedge.load(built(tmp_path_factory, ("onnx",)), "onnxruntime")


def _poisoned(session, value=np.nan, index=1) -> State:
    arrays = [a.copy() for a in session.init_state(1)]
    arrays[index].flat[3] = value
    return session.init_state(1).with_tensors(arrays)


# finite state ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("call", ["step", "prefill", "generate"])
def test_session_refuses_non_finite_state(session, value, call):
    state = _poisoned(session, value)
    with pytest.raises(ValueError, match=r"state\.1 holds NaN or inf"):
        if call == "step":
            session.step(np.array([1]), state)
        elif call == "prefill":
            session.prefill(np.array([[1, 2, 3]]), state)
        else:
            session.generate([1, 2], 3, state=state)          # refused when called, not at the first next()


def test_check_finite_false_opts_out(session):
    logits, _ = session.step(np.array([1]), _poisoned(session), check_finite=False)
    assert np.isnan(logits).all()                             # what the check exists to prevent


def test_own_states_are_sealed_and_a_swapped_tensor_breaks_the_seal(session):
    """A state the session returned comes back with O(1) checks (its seal); one whose tensors were swapped, of
    another batch or sealed by another session is checked in full."""
    _, state = session.step(np.array([1]), session.init_state(1))
    assert state.sealed_by(session._seal)
    _, state = session.step(np.array([2]), state)
    assert state.sealed_by(session._seal) and state.sealed_by(session._seal, 1)
    assert not state.sealed_by(session._seal, 2)               # the seal records the batch it was made for
    with pytest.raises(ValueError, match="batch"):
        session.step(np.array([1, 2]), state)                  # the seal never skips the batch check
    other = seqedge.load(session.manifest.root, "onnxruntime")
    assert not state.sealed_by(other._seal)
    other.step(np.array([3]), state)                           # checked in full, and valid
    state.tensors[1] = _poisoned(session).tensors[1]
    assert not state.sealed_by(session._seal)
    with pytest.raises(ValueError, match=r"state\.1 holds NaN or inf"):
        session.step(np.array([1]), state)


def test_state_load_refuses_non_finite_unless_asked(session, tmp_path):
    path = tmp_path / "s.safetensors"
    _poisoned(session).save(path)
    with pytest.raises(ValueError, match="NaN or inf"):
        State.load(path)
    assert np.isnan(State.load(path, check_finite=False).tensors[1]).any()


# dtype, complex, type -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.complex64, np.int32])
def test_session_refuses_other_dtypes_instead_of_casting(session, dtype):
    arrays = [a.astype(dtype) for a in session.init_state(1)]
    with pytest.raises(ValueError, match=r"state\.0 has dtype .*never cast silently"):
        session.step(np.array([1]), session.init_state(1).with_tensors(arrays))


def test_torch_float64_session_keeps_its_own_state_dtype(tmp_path_factory):
    ref = seqedge.load(built(tmp_path_factory, ("onnx",)), "torch", dtype="float64")
    _, state = ref.step(np.array([1]), ref.init_state(1))
    assert state.tensors[0].dtype == np.float64
    _, state = ref.step(np.array([2]), state)                 # its own float64 state goes back in


@pytest.mark.parametrize("tensors,message", [(None, "list of numpy arrays"), ([[0.0], [0.0]], "0: list"),
                                             ("abc", "list of numpy arrays")])
def test_state_of_non_tensors_is_a_type_error(session, tensors, message):
    with pytest.raises(TypeError, match=message):
        State(tensors, session.specs, session.fingerprint)


@pytest.mark.parametrize("state", [None, [], "state"])
def test_session_calls_with_a_non_state_are_type_errors(session, state):
    with pytest.raises(TypeError, match="seqedge State"):
        session.step(np.array([1]), state)


def test_state_file_of_another_dtype_is_refused(session, tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "s.safetensors"
    session.init_state(1).save(path)
    meta = _metadata(path)
    arrays = {s.name: a.astype(np.float64) for s, a in zip(session.specs, session.init_state(1))}
    save_file(arrays, str(path), metadata={k: v for k, v in meta.items() if k != "sha256"})
    with pytest.raises(ValueError, match="float64"):
        State.load(path)


# checksum -------------------------------------------------------------------------------------------------
def _metadata(path: Path) -> dict:
    blob = path.read_bytes()
    (size,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + size])["__metadata__"]


def test_checksum_is_sha256_of_raw_tensor_bytes_in_spec_order(session, tmp_path):
    """What a C++ or JS runner must compute: parse the safetensors header, concatenate each spec's data bytes."""
    rng = np.random.default_rng(0)
    state = session.init_state(2).with_tensors([rng.standard_normal(a.shape).astype(np.float32)
                                                for a in session.init_state(2)])
    path = tmp_path / "s.safetensors"
    state.save(path)
    blob = path.read_bytes()
    (size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + size])
    data = blob[8 + size:]
    digest = hashlib.sha256()
    for spec in json.loads(header["__metadata__"]["specs"]):
        begin, end = header[spec["name"]]["data_offsets"]
        assert header[spec["name"]]["dtype"] == "F32"
        digest.update(data[begin:end])
    assert header["__metadata__"]["sha256"] == digest.hexdigest() == tensors_sha256(state.numpy())
    assert set(header["__metadata__"]) == {"format", "format_version", "fingerprint", "specs", "sha256"}
    loaded = State.load(path)
    for a, b in zip(loaded, state):
        np.testing.assert_array_equal(a, b)


def test_a_flipped_byte_in_a_state_file_is_refused(session, tmp_path):
    path = tmp_path / "s.safetensors"
    session.init_state(1).save(path)
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0x01                          # inside the last tensor's data: a tiny finite value, not a NaN
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="sha256"):
        State.load(path)


def test_state_files_without_a_checksum_still_load(session, tmp_path):
    """Files from before the checksum existed: read without it (documented in docs/security.md)."""
    from safetensors.numpy import save_file

    path = tmp_path / "old.safetensors"
    session.init_state(1).save(path)
    meta = {k: v for k, v in _metadata(path).items() if k != "sha256"}
    save_file({s.name: a for s, a in zip(session.specs, session.init_state(1))}, str(path), metadata=meta)
    assert State.load(path).fingerprint == session.fingerprint


# generate -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,message", [
    (dict(temperature=float("nan")), "temperature"), (dict(temperature=float("inf")), "temperature"),
    (dict(temperature=-1.0), "temperature"), (dict(temperature=1.0, top_k=2.5), "top_k"),
    (dict(temperature=1.0, top_k=True), "top_k"), (dict(temperature=1.0, top_p=0.0), "top_p"),
    (dict(temperature=1.0, top_p=1.5), "top_p"), (dict(temperature=1.0, top_p=float("nan")), "top_p"),
    (dict(max_new_tokens=-1), "max_new_tokens"), (dict(max_new_tokens=2.5), "max_new_tokens"),
    (dict(seed=1.5), "seed"), (dict(prompt=[1, 999]), "token ids"), (dict(prompt=[]), "prompt"),
])
def test_generate_checks_arguments_when_called(session, kwargs, message):
    kwargs = {"prompt": [1, 2, 3], "max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        session.generate(**kwargs)                            # no next(): the check is eager


def test_generate_still_generates(session):
    tokens = list(session.generate([1, 2, 3], 5, temperature=0.8, top_k=5, top_p=0.9, seed=0))
    again = list(session.generate([1, 2, 3], 5, temperature=0.8, top_k=5, top_p=0.9, seed=0))
    assert len(tokens) == 5 and tokens == again


# crossing runtimes ----------------------------------------------------------------------------------------
def test_onnxruntime_state_goes_to_torch_without_warnings(tmp_path_factory, session):
    _, state = session.prefill(np.array([[1, 2, 3, 4]]), session.init_state(1))
    assert not state.tensors[0].flags.writeable               # ORT hands out read-only views
    torch_session = seqedge.load(built(tmp_path_factory, ("onnx",)), "torch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch_session.step(np.array([5]), state)


# permissions ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_artifacts_and_state_files_follow_the_umask(tmp_path, session, umask):
    from _artifacts import tiny_model
    from seqedge.export.api import export_model

    previous = os.umask(umask)
    try:
        out = tmp_path / "art"
        export_model(tiny_model("gated"), out, [], progress=False)
        session.init_state(1).save(tmp_path / "s.safetensors")
    finally:
        os.umask(previous)
    for folder in (out, out / "torch", out / "torch" / "fp32"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask, folder
    for file in (out / "manifest.json", out / "torch" / "fp32" / "model.safetensors", tmp_path / "s.safetensors"):
        assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~umask, file
