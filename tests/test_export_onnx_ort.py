"""onnx-ort target: the scan as com.microsoft::LinearAttention; same contract and parity as the portable graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from _artifacts import RULES, ort_artifact, reference, tiny_model

import seqedge
from seqedge.evaluate.export_check import export_verified as export_model
from seqedge.evaluate.parity import BUDGETS, check_session, text_tokens

TOKENS = 512


@pytest.fixture(params=RULES)
def artifact(request, tmp_path_factory):
    """Tiny seed-0 model with onnx (portable) and onnx-ort at fp32 and int8."""
    return ort_artifact(tmp_path_factory, request.param)


def test_graph_has_one_fused_scan_per_layer_and_portable_graph_none(artifact):
    for entry in ("step", "chunk"):
        fused = onnx.load(str(artifact / "onnx-ort" / "fp32" / f"{entry}.onnx"))
        # ONNX Runtime's SimplifiedLayerNormalization sits in the default domain, which onnx.checker rejects
        assert sum(n.op_type == "SimplifiedLayerNormalization" for n in fused.graph.node) == 2 * 3 + 1
        ops = [n for n in fused.graph.node if n.op_type == "LinearAttention"]
        assert len(ops) == 2 and all(n.domain == "com.microsoft" for n in ops)        # tiny model: 2 layers
        # one token's conv is ONNX Runtime's op, a chunk's runs as elementwise ops on channels-last rows
        convs = [n for n in fused.graph.node if n.op_type == "CausalConvWithState"]
        assert len(convs) == (2 if entry == "step" else 0) and not any(n.op_type == "Conv" for n in fused.graph.node)
        # ... which need no transpose of the chunk: only the carried tails and the tied head's table move
        weights = {t.name for t in fused.graph.initializer}
        assert all(n.input[0].startswith("state.") or n.output[0].startswith("new_state.") or n.input[0] in weights
                   for n in fused.graph.node if n.op_type == "Transpose")
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


@pytest.mark.parametrize("family", ["mamba2 groups=32", "gated-deltanet"])
def test_grouped_keys_and_head_gates_go_to_the_fused_op_unexpanded(family, tmp_path):
    """A family with grouped key heads and a gate per head (Mamba2: one B/C group; Gated DeltaNet: two value heads
    per key head): the fused graphs hand q, k and the gate to LinearAttention as they are (``q_num_heads`` the key
    heads, ``kv_num_heads`` the value heads, no Expand anywhere), and agree with the portable graphs, which expand
    them, over a prefill of a chunk and a tail and then steps, state carried, batch 2."""
    import torch
    from _kernel_cases import family_decoder_config, randomize

    from seqedge.model import SequentialAttentionModel

    config = family_decoder_config(family)
    model = SequentialAttentionModel(config).eval()
    randomize(model, seed=4)
    export_model(model, tmp_path / "art", ["onnx", "onnx-ort"], ["none"], progress=False)
    for entry in ("step", "chunk"):
        graph = onnx.load(str(tmp_path / "art" / "onnx-ort" / "fp32" / f"{entry}.onnx")).graph
        assert not any(n.op_type == "Expand" for n in graph.node), entry
        for node in (n for n in graph.node if n.op_type == "LinearAttention"):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert (attrs["q_num_heads"], attrs["kv_num_heads"]) == (config.key_heads, config.num_heads)
            readers = {n.op_type for n in graph.node if node.output[0] in n.input}
            if family.startswith("mamba2"):     # its norm reads the packed channels: the op's output as it is
                assert "Reshape" not in readers, (entry, readers)
    fused, portable = (seqedge.load(tmp_path / "art", r) for r in ("onnxruntime-fused", "onnxruntime"))
    tokens = torch.randint(0, config.vocab_size, (2, config.chunk_size + 9), generator=torch.Generator().manual_seed(1))
    lf, sf = fused.prefill(tokens[:, :-3].numpy(), fused.init_state(2))
    lp, sp = portable.prefill(tokens[:, :-3].numpy(), portable.init_state(2))
    assert _rel(lf, lp) <= 1e-5
    for t in range(tokens.shape[1] - 3, tokens.shape[1]):
        lf, sf = fused.step(tokens[:, t].numpy(), sf)
        lp, sp = portable.step(tokens[:, t].numpy(), sp)
        assert _rel(lf, lp) <= 1e-5
    for a, b in zip(sf.tensors, sp.tensors):
        assert _rel(a, b) <= 1e-5


def _rel(got, want) -> float:
    """max |got - want| over max |want|: float32 rounding of two graphs of the same math."""
    return float(np.abs(np.asarray(got) - np.asarray(want)).max() / np.abs(np.asarray(want)).max())


@pytest.mark.parametrize("T", [1, 2, 5, 64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_chunk_conv_matches_the_reference_short_conv(T, bias, dtype, tol):
    """The chunk's conv as shifted rows (export/ort_fused.py) against seqedge.ops.short_conv: output and new tail,
    fresh random inputs and a carried tail, lengths shorter and longer than the kernel."""
    from seqedge.export.ort_fused import ORT_FUSED_OPS
    from seqedge.ops import short_conv

    g = torch.Generator().manual_seed(T * 2 + bias)
    B, C, K = 3, 7, 4
    x, tail = torch.randn(B, T, C, generator=g, dtype=dtype), torch.randn(B, C, K - 1, generator=g, dtype=dtype)
    w = torch.randn(C, 1, K, generator=g, dtype=dtype)
    b = torch.randn(C, generator=g, dtype=dtype) if bias else None
    for got, want in zip(ORT_FUSED_OPS.short_conv(x, tail, w, b), short_conv(x, tail, w, b)):
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
