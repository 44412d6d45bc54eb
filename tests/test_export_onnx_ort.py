"""onnx-ort target: the scan as com.microsoft::LinearAttention; same contract and parity as the portable graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _artifacts import RULES, reference, tiny_model

import seqedge
from seqedge.evaluate.export_check import export_verified as export_model
from seqedge.evaluate.parity import BUDGETS, check_session, text_tokens

TOKENS = 512
_CACHE = {}


@pytest.fixture(params=RULES)
def artifact(request, tmp_path_factory):
    """Tiny seed-0 model with onnx (portable) and onnx-ort at fp32 and int8."""
    rule = request.param
    if rule not in _CACHE:
        out = tmp_path_factory.mktemp(f"ort-{rule}") / "art"
        export_model(tiny_model(rule), out, ["onnx", "onnx-ort"], ["none", "int8"], progress=False)
        _CACHE[rule] = out
    return _CACHE[rule]


def test_graph_has_one_fused_scan_per_layer_and_portable_graph_none(artifact):
    for entry in ("step", "chunk"):
        fused = onnx.load(str(artifact / "onnx-ort" / "fp32" / f"{entry}.onnx"))
        # ONNX Runtime's SimplifiedLayerNormalization sits in the default domain, which onnx.checker rejects
        assert sum(n.op_type == "SimplifiedLayerNormalization" for n in fused.graph.node) == 2 * 3 + 1
        ops = [n for n in fused.graph.node if n.op_type == "LinearAttention"]
        assert len(ops) == 2 and all(n.domain == "com.microsoft" for n in ops)        # tiny model: 2 layers
        convs = [n for n in fused.graph.node if n.op_type == "CausalConvWithState"]
        assert len(convs) == 2 and not any(n.op_type == "Conv" for n in fused.graph.node)
        portable = onnx.load(str(artifact / "onnx" / "fp32" / f"{entry}.onnx"))
        assert not any(n.domain == "com.microsoft" for n in portable.graph.node)


def test_fused_matches_portable_with_carried_state(artifact):
    """Prefill then steps at batch 3, state carried: the fused and the portable graphs agree to float32 rounding."""
    fused, portable = seqedge.load(artifact, "onnxruntime-fused"), seqedge.load(artifact, "onnxruntime")
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, size=(3, 40))
    sf, sp = fused.init_state(3), portable.init_state(3)
    lf, sf = fused.prefill(tokens[:, :33], sf)                  # 33: two chunks of 16 and a tail
    lp, sp = portable.prefill(tokens[:, :33], sp)
    np.testing.assert_allclose(lf, lp, rtol=1e-5, atol=1e-5)
    for t in range(33, 40):
        lf, sf = fused.step(tokens[:, t], sf)
        lp, sp = portable.step(tokens[:, t], sp)
        np.testing.assert_allclose(lf, lp, rtol=1e-5, atol=1e-5)
    for a, b in zip(sf.tensors, sp.tensors):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scheme", ["none", "int8"])
def test_parity_budget(artifact, scheme):
    session = seqedge.load(artifact, "onnxruntime-fused", quantization=scheme)
    tokens = text_tokens(TOKENS)
    report = check_session(session, tokens, prefill=TOKENS // 2, reference=reference(artifact, tokens, TOKENS // 2))
    assert report.passed, report.failures
    if scheme == "none":
        assert report.max_abs <= BUDGETS["fp32"].max_abs and report.state_rel_err < 1e-4
    assert report.last["max_abs"] <= 3 * report.first["max_abs"] + 1e-6


def test_old_onnxruntime_is_refused_with_the_upgrade_command(monkeypatch):
    import onnxruntime

    from seqedge.export.onnx_ort_target import OnnxOrtTarget

    monkeypatch.setattr(onnxruntime, "__version__", "1.31.0")
    with pytest.raises(ImportError, match=r"onnxruntime >= 1\.32.*pip install"):
        OnnxOrtTarget().check_available()
