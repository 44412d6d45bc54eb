"""Donated steps (``Session.step(..., donate=True)``): ONNX Runtime's steps over buffers the backend owns, updating
in place the states the export marked safe. The same numbers as plain steps, bit for bit; a donated state is
spent; a state kept (not donated) is never written."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from _artifacts import RULES, ort_artifact
from _donation import assert_streams_in_turn_match_alone

import seqedge
from seqedge.export import graph_passes
from seqedge.runtimes.onnxruntime_runtime import OnnxRuntimeBackend
from seqedge.runtimes.ort_step_chain import StepChain, in_place_agrees

ONNX_RUNTIMES = ("onnxruntime", "onnxruntime-fused")


@pytest.fixture(params=RULES)
def artifact(request, tmp_path_factory):
    return ort_artifact(tmp_path_factory, request.param)


def _tokens(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape)


@pytest.mark.parametrize("runtime", ONNX_RUNTIMES)
@pytest.mark.parametrize("scheme", ["none", "int8"])
def test_donated_steps_match_plain_steps_bit_for_bit(artifact, runtime, scheme):
    """Batch 3, a prefill whose tail runs as steps, then steps with the state carried: identical logits and
    states, whether the states are updated in place (fused graphs) or alternate between two buffers (portable)."""
    session = seqedge.load(artifact, runtime, quantization=scheme)
    tokens = _tokens(1, (3, 29))
    plain, donated = session.init_state(3), session.init_state(3)
    lp, plain = session.prefill(tokens[:, :21], plain)          # one chunk of 16, then 5 steps (4 donated)
    ld, donated = session.prefill(tokens[:, :21], donated)
    np.testing.assert_array_equal(lp, ld)
    for t in range(21, 29):
        lp, plain = session.step(tokens[:, t], plain)
        ld, donated = session.step(tokens[:, t], donated, donate=True)
        np.testing.assert_array_equal(lp, ld)
    for a, b in zip(plain.tensors, donated.tensors):
        np.testing.assert_array_equal(a, b)
    states = len(session.specs)
    expected = states if runtime == "onnxruntime-fused" else 0
    assert session.describe()["in_place_states"] == f"{expected} of {states}"


def test_a_donated_state_is_spent_on_every_runtime(artifact, tmp_path):
    for runtime in ("onnxruntime-fused", "torch"):
        session = seqedge.load(artifact, runtime)
        old = session.init_state(1)
        _, new = session.step([3], old, donate=True)
        for use in (lambda: session.step([4], old), lambda: session.prefill([[4, 5]], old),
                    lambda: old.save(tmp_path / "s.safetensors"), old.numpy):
            with pytest.raises(ValueError, match="donated"):
                use()
        session.step([4], new)                                   # the returned state is the live one
        new.save(tmp_path / f"{runtime}.safetensors")


def test_states_that_are_kept_are_never_written(artifact):
    """A state stepped without donating stays as it was while the chain goes on from it; two streams donating in
    turn (each new chain copies its state in) give what each gives alone."""
    session = seqedge.load(artifact, "onnxruntime-fused")
    tokens = _tokens(2, (2, 12))
    s = session.init_state(1)
    for t in range(4):
        _, s = session.step(tokens[:1, t], s, donate=True)
    kept = [np.array(a) for a in s.tensors]
    branch_logits, branch = session.step(tokens[:1, 4], s)        # not donated: s stays live
    branch_values = [np.array(a) for a in branch.tensors]
    _, on = session.step(tokens[:1, 4], s, donate=True)
    for t in range(5, 12):
        _, on = session.step(tokens[:1, t], on, donate=True)
    np.testing.assert_array_equal(session.step(tokens[:1, 4], session.init_state(1).with_tensors(kept))[0],
                                  branch_logits)
    for a, b in zip(branch.tensors, branch_values):
        np.testing.assert_array_equal(a, b)
    assert not branch.spent

    assert_streams_in_turn_match_alone(session, tokens)


def test_a_donated_loop_state_resumes_in_another_runtime(artifact):
    fused, reference = seqedge.load(artifact, "onnxruntime-fused"), seqedge.load(artifact, "torch")
    tokens = _tokens(3, (1, 10))
    s = fused.init_state(1)
    for t in range(9):
        _, s = fused.step(tokens[:, t], s, donate=True)
    plain = fused.init_state(1)
    for t in range(9):
        _, plain = fused.step(tokens[:, t], plain)
    moved = reference.step(tokens[:, 9], reference.init_state(1).with_tensors(s.numpy()))[0]
    np.testing.assert_allclose(moved, fused.step(tokens[:, 9], plain)[0], rtol=1e-4, atol=1e-4)


def test_the_export_marks_the_fused_ops_states_in_place(artifact):
    variants = {v.name: v for v in seqedge.artifact.read_manifest(artifact).variants}
    fused = onnx.load(str(artifact / "onnx-ort" / "fp32" / "step.onnx"), load_external_data=False)
    names = [i.name for i in fused.graph.input if i.name.startswith("state.")]
    assert graph_passes.in_place_states(fused) == names
    assert variants["onnx-ort/fp32"].info["step_in_place_states"] == names
    assert variants["onnx/fp32"].info["step_in_place_states"] == []


def _unsafe_graph() -> bytes:
    """``new_state.0 = -state.0``; the logits read ``state.0`` after that: updated in place they would read the
    new state, so in-place use of ``state.0`` must be refused by the check against a plain run."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Neg", ["state.0"], ["new_state.0"]),
             helper.make_node("Cast", ["tokens"], ["t"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["t", "axes"], ["t2"]),
             helper.make_node("Add", ["new_state.0", "state.0"], ["sum"]),
             helper.make_node("Add", ["sum", "t2"], ["logits"])]
    graph = helper.make_graph(
        nodes, "unsafe",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch"]),
         helper.make_tensor_value_info("state.0", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("new_state.0", TensorProto.FLOAT, ["batch", 4])],
        [onnx.numpy_helper.from_array(np.array([1], np.int64), "axes")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_an_in_place_claim_the_kernels_break_is_caught_and_dropped(caplog):
    import onnxruntime as ort

    session = ort.InferenceSession(_unsafe_graph(), providers=["CPUExecutionProvider"])
    state = [np.ones((2, 4), np.float32)]
    assert not in_place_agrees(session, ["state.0"], state, {"state.0"})
    assert in_place_agrees(session, ["state.0"], state, set())
    assert graph_passes.in_place_states(onnx.load_from_string(_unsafe_graph())) == []   # Neg is not listed

    backend = OnnxRuntimeBackend({"step": session, "chunk": session}, ["CPUExecutionProvider"], ["state.0"],
                                 in_place=["state.0"])
    tokens = np.array([1, 2], np.int64)
    with caplog.at_level(logging.WARNING, logger="seqedge.runtimes"):
        logits, new = backend.step_donated(tokens, [np.array(s) for s in state])
    assert "updated in place" in caplog.text and backend.in_place == frozenset()
    want_logits, want_state = session.run(None, {"tokens": tokens, "state.0": state[0]})
    np.testing.assert_array_equal(logits, want_logits)
    np.testing.assert_array_equal(new[0], want_state)
    logits, _ = backend.step_donated(tokens, new)                     # the chain goes on, states kept apart
    np.testing.assert_array_equal(logits, session.run(None, {"tokens": tokens, "state.0": want_state})[0])


def test_a_chain_owns_copies_and_hands_back_read_only_arrays(artifact):
    import onnxruntime as ort

    path = artifact / "onnx-ort" / "fp32" / "step.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs() if i.name.startswith("state.")]
    given = [np.zeros([3 if isinstance(d, str) else d for d in i.shape], np.float32)
             for i in session.get_inputs() if i.name in names]
    chain = StepChain(session, names, given, set(names))
    _, new = chain.step(session, np.array([1, 2, 3]))
    assert chain.holds(new) and not chain.holds(given)
    assert all(not a.flags.writeable for a in new)
    assert all(not a.any() for a in given)                         # the state given was copied, not written
