"""The parity harness: statistics on known perturbations, budgets, a dropped state write-back is caught, the
float64 reference is self-consistent."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from _artifacts import onnx_artifact, reference, tiny_model

import seqedge
from seqedge.evaluate.parity import (
    BUDGETS,
    StreamResult,
    bits_per_byte,
    check_session,
    compare,
    reference_stream,
    text_tokens,
)
from seqedge.runtimes.session import Session


def _stream(seed=0, T=300, V=259):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(T, V)) * 3
    state = [rng.normal(size=(1, 4, 3)), rng.normal(size=(1, 2, 4, 4))]
    return StreamResult(logits, state), rng.integers(0, V, T)


def test_identical_streams_are_perfect():
    ref, tokens = _stream()
    report = compare(ref, ref, tokens, prefill=10)
    assert report.max_abs == 0 and report.top1 == 1 and report.kl == 0 and report.state_rel_err == 0
    assert report.sqnr_db == math.inf and report.passed


def test_statistics_of_a_known_perturbation():
    ref, tokens = _stream()
    test = StreamResult(ref.logits.copy(), [s * 1.01 for s in ref.state])
    test.logits[250, :] += 0.5                       # one late position shifted: no probability change
    top = ref.logits[260].argmax()
    test.logits[260, top] -= 100                     # one late position with its top-1 flipped
    report = compare(test, ref, tokens, prefill=10, window=100)
    assert report.max_abs == pytest.approx(100)
    assert report.top1 == pytest.approx(1 - 1 / 300)
    assert report.state_rel_err == pytest.approx(0.01)
    assert report.first["max_abs"] == 0 and report.last["max_abs"] == pytest.approx(100)
    assert report.last["top1"] == pytest.approx(0.99)
    assert report.per_step_max_abs[250] == pytest.approx(0.5)
    assert report.kl > 0 and not report.passed and "max |logit diff|" in report.failures[0]


def test_fp32_budget_scales_with_the_logits():
    """max_abs is per unit of max(1, max|reference logit|): the same error passes large logits, fails small."""
    ref, tokens = _stream()
    for scale, ok in ((10.0, True), (0.1, False)):
        big = StreamResult(ref.logits * scale, ref.state)
        test = StreamResult(big.logits.copy(), ref.state)
        test.logits[100, 0] += 2e-4 * max(1.0, 3 * scale)     # ~2e-4 of each stream's logit scale
        report = compare(test, big, tokens, prefill=10)
        assert report.logit_scale == pytest.approx(max(1.0, float(abs(big.logits).max())))
        assert report.passed == (report.max_abs <= 1e-4 * report.logit_scale) and report.passed is not None


@pytest.mark.parametrize("tag,top1,ok", [("fp16", 0.995, True), ("fp16", 0.985, False), ("int8", 0.96, True),
                                         ("int4", 0.94, False)])
def test_top1_budgets(tag, top1, ok):
    ref, tokens = _stream(T=1000)
    test = StreamResult(ref.logits.copy(), ref.state)
    flip = int(round((1 - top1) * 1000))
    for t in range(flip):
        test.logits[t, ref.logits[t].argmax()] -= 50
    report = compare(test, ref, tokens, prefill=0, tag=tag)
    assert report.top1 == pytest.approx(top1)
    assert report.passed is ok or any("bpb" in f for f in report.failures)
    assert any("top-1" in f for f in report.failures) is not ok


def test_bits_per_byte():
    tokens = np.array([1, 2, 3, 4])
    assert bits_per_byte(np.zeros((4, 259)), tokens) == pytest.approx(math.log2(259))
    peaked = np.full((4, 259), -1e9)
    peaked[np.arange(3), tokens[1:]] = 0
    assert bits_per_byte(peaked, tokens) == pytest.approx(0, abs=1e-9)


def test_text_tokens_are_real_text_and_repeatable():
    a, b = text_tokens(500), text_tokens(500)
    assert a[0] == 256 and (a == b).all() and a.dtype == np.int64
    assert b"command-line" in bytes(a[1:].tolist())  # the argparse.py source, not noise


def test_text_tokens_fit_a_vocabulary_smaller_than_bytes(tmp_path):
    """Imported models may have fewer than 257 ids: the parity stream (and so every export's check) fits them."""
    from seqedge.evaluate.export_check import export_verified

    small = text_tokens(500, vocab_size=64)
    assert small.max() < 64 and (small == text_tokens(500) % 64).all()
    assert (text_tokens(500, vocab_size=300) == text_tokens(500)).all()
    export_verified(tiny_model("gated", vocab_size=64), tmp_path / "art", "onnx", progress=False)  # raises if not
    parity = json.loads((tmp_path / "art" / "manifest.json").read_text())["parity"]
    assert parity and all(not r.get("failures") and "max_abs" in r for r in parity.values())


@pytest.mark.parametrize("rule", ["gated", "delta"])
def test_reference_forms_agree_in_float64(rule):
    """The float64 reference: all-steps, chunk+steps and chunks-only splits agree to float64 rounding."""
    model = tiny_model(rule)
    tokens = text_tokens(80)
    all_steps = reference_stream(model, tokens, 0)
    chunked = reference_stream(model, tokens, 64)
    mixed = reference_stream(model, tokens, 41)
    assert all_steps.logits.dtype == np.float64
    for other in (chunked, mixed):
        assert np.abs(other.logits - all_steps.logits).max() < 1e-10
        for a, b in zip(other.state, all_steps.state):
            assert a.dtype == np.float64 and np.abs(a - b).max() < 1e-10


class DroppedWriteBack:
    """A broken backend: computes the logits but hands back the state it was given (no write-back)."""

    def __init__(self, inner):
        self.inner, self.runtime, self.target = inner, inner.runtime, inner.target

    def run(self, entry, tokens, state):
        logits, _ = self.inner.run(entry, tokens, state)
        return logits, state

    def describe(self):
        return {}


def test_dropped_state_write_back_fails(tmp_path_factory):
    artifact = onnx_artifact(tmp_path_factory, "gated")
    good = seqedge.load(artifact, "onnxruntime")
    broken = Session(good.manifest, good.variant, DroppedWriteBack(good.backend), "onnxruntime")
    tokens = text_tokens(256)
    report = check_session(broken, tokens, prefill=128, reference=reference(artifact, tokens, 128))
    assert not report.passed and report.state_rel_err > 0.5
    assert report.last["max_abs"] > 100 * BUDGETS["fp32"].max_abs
