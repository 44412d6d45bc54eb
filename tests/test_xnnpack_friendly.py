"""The ExecuTorch target's export-only rewrites (export/xnnpack_friendly.py) compute the model's function.

- The rewritten model's ``step`` and ``chunk`` entry points (the chunk with the scan of export/xnnpack_scan.py,
  tested on its own in tests/test_xnnpack_scan.py) match the original's on random tokens and a random carried
  state (float32: 1e-5 relative; float16: the half model against its own rewrite), for both update rules, tied
  and untied heads; the original model is left untouched.
- After int8 quantization the quantized linears are kept as they are (the gate/up linear is not split).
- The flavour's ops against the reference ones: the broadcast exactly, the bmm readout to float32 rounding.
- The edge passes plus the rewrite leave fewer ops on the portable kernels of a lowered ``step`` (no
  ``mean.dim``, no ``mm``) and fewer delegate calls, and the program it gives runs to 1e-5 of the eager model at
  batch 1 and 3 (the ``-1`` it writes is resolved at run time, not fixed to the traced batch).
- A Mamba2-shaped model (softplus gate, grouped keys, no MLP) lowered at a static batch: nothing but the
  embedding, the token reshape, constant ones and the softplus stays portable, a second layer adds one delegate
  call (the boundary at its softplus), and both programs run to 1e-5 of the eager model.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from _kernel_cases import MAMBA2

from seqedge.config import MixerParts, SequentialAttentionConfig
from seqedge.export.entry_points import entry_module, example_inputs
from seqedge.export.xnnpack_friendly import (
    PickedTailConv,
    RowMeanRMSNorm,
    SplitSwiGLU,
    _bmm_readout,
    _broadcast,
    row_blocks,
    xnnpack_friendly,
)
from seqedge.export.xnnpack_scan import StaticMaskAttention
from seqedge.layers import RMSNorm, ShortConv, SwiGLU
from seqedge.model import SequentialAttentionModel

DIMS = dict(hidden_size=32, num_layers=2, num_heads=2, head_k_dim=16, head_v_dim=8, gate_rank=4, chunk_size=16,
            mlp_multiple_of=16)


def _model(rule: str, tie: bool = True, dtype: torch.dtype = torch.float32, layers: int = 2):
    torch.manual_seed(0)
    config = SequentialAttentionConfig(**{**DIMS, "num_layers": layers}, update_rule=rule, tie_embeddings=tie)
    model = SequentialAttentionModel(config)
    with torch.no_grad():                 # non-trivial norm weights, so a dropped weight would show
        for m in model.modules():
            if isinstance(m, RMSNorm):
                m.weight.uniform_(0.5, 1.5)
    return model.eval().to(dtype)


def _close(got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    assert torch.isfinite(want).all()
    scale = want.abs().max().clamp_min(1e-30)
    err = (got - want).abs().max() / scale
    assert err <= rtol, f"max |diff| / max |ref| = {err:.3g} > {rtol}"


@pytest.mark.parametrize("rule", ["gated", "delta"])
@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("entry", ["step", "chunk"])
def test_rewritten_entry_points_match_the_model(rule, tie, entry):
    model = _model(rule, tie)
    before = copy.deepcopy(model.state_dict())
    friendly = xnnpack_friendly(model)
    assert not any(isinstance(m, (RMSNorm, ShortConv, SwiGLU)) for m in friendly.modules())
    kinds = [type(m) for m in friendly.modules()]
    L = DIMS["num_layers"]                  # attn_norm, mlp_norm, out_norm per layer, and the final norm
    assert (kinds.count(RowMeanRMSNorm), kinds.count(PickedTailConv), kinds.count(SplitSwiGLU),
            kinds.count(StaticMaskAttention)) == (3 * L + 1, L, L, L)
    for seed in range(3):
        inputs = example_inputs(model, entry, batch_size=3, seed=seed)      # random tokens and state
        with torch.no_grad():
            want = entry_module(model, entry)(*inputs)
            got = entry_module(friendly, entry)(*inputs)
        for g, w in zip(got, want, strict=True):                          # logits, then every new state
            _close(g, w, 1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())     # the original untouched
    assert not isinstance(model.norm, RowMeanRMSNorm)


def test_quantized_gate_up_is_split_by_rows_and_matches():
    """After torchao quantization (as the int8/int4 target runs it) the gate/up linear is cut into its two row
    blocks, still quantized (each row keeps its scale), and the entry points match the quantized model."""
    pytest.importorskip("torchao", reason="torchao is not installed (pip install torchao==0.18.0)")
    from seqedge.export.executorch_target import prepare_model
    from seqedge.export.quantization import QuantizationRecipe

    for scheme in ("int8", "int4"):
        quantized, info = prepare_model(_model("gated"), QuantizationRecipe(scheme=scheme))
        assert info["quantized_linears"] > 0
        kind = type(quantized.blocks[0].mlp.gate_up.weight)
        assert kind is not torch.Tensor
        friendly = xnnpack_friendly(quantized)
        split = [m for m in friendly.modules() if isinstance(m, SplitSwiGLU)]
        assert len(split) == DIMS["num_layers"]
        assert all(type(m.gate.weight) is kind and type(m.up.weight) is kind for m in split)
        for entry in ("step", "chunk"):
            inputs = example_inputs(quantized, entry, batch_size=2, seed=2)
            with torch.no_grad():
                want, got = entry_module(quantized, entry)(*inputs), entry_module(friendly, entry)(*inputs)
            for g, w in zip(got, want, strict=True):
                _close(g, w, 1e-5)


class _Unsliceable(torch.Tensor):
    """A weight type whose rows cannot be cut (as a quantized layout without row slicing)."""

    def __getitem__(self, index):
        raise NotImplementedError("no row slices")


def test_a_weight_that_cannot_be_cut_keeps_the_fused_linear():
    model = _model("gated")
    for block in model.blocks:
        weight = block.mlp.gate_up.weight
        block.mlp.gate_up.weight = nn.Parameter(torch.Tensor._make_subclass(_Unsliceable, weight.detach()),
                                                requires_grad=False)
    assert row_blocks(model.blocks[0].mlp.gate_up, model.blocks[0].mlp.hidden) is None
    friendly = xnnpack_friendly(model, inplace=True)        # (a copy would deep-copy the toy subclass)
    assert not any(isinstance(m, SplitSwiGLU) for m in friendly.modules())
    assert all(isinstance(b.mlp, SwiGLU) for b in friendly.blocks)


def test_rewritten_half_model_matches_the_half_model():
    model = _model("gated", dtype=torch.float16)
    friendly = xnnpack_friendly(model)
    for entry in ("step", "chunk"):
        inputs = example_inputs(model, entry, batch_size=2, seed=1)
        with torch.no_grad():
            want, got = entry_module(model, entry)(*inputs), entry_module(friendly, entry)(*inputs)
        for g, w in zip(got, want, strict=True):
            _close(g, w, 2e-3)              # one float16 rounding (2^-11) of a norm output may flip


# the flavour's ops --------------------------------------------------------------------------------------------
def test_broadcast_and_bmm_readout_match_the_reference_forms():
    from seqedge.scan.recurrent import einsum_readout

    torch.manual_seed(0)
    x = torch.randn(3, 1, 2, 1, 5)
    assert torch.equal(_broadcast(x, -1, -1, -1, 4, -1), x.expand(-1, -1, -1, 4, -1))
    assert _broadcast(x, -1, 1, 2, -1, 5) is x                 # nothing to broadcast: no op
    q, state = torch.randn(3, 7, 5), torch.randn(3, 7, 5, 6)
    torch.testing.assert_close(_bmm_readout(q, state), einsum_readout(q, state), rtol=1e-6, atol=1e-6)


# lowering --------------------------------------------------------------------------------------------------
def _lower_step(model: SequentialAttentionModel, rewrite: bool):
    exir = pytest.importorskip("executorch.exir", reason="ExecuTorch is not installed "
                                                         "(pip install executorch==1.5.1 torchao==0.18.0)")
    from seqedge.export import executorch_target as et
    from seqedge.quiet import quiet_libraries

    with quiet_libraries():
        model = xnnpack_friendly(model) if rewrite else model
        program = et._export_entry(model, "step", max_batch=4)
        edge = et.lower({"step": program}) if rewrite else exir.to_edge_transform_and_lower(
            {"step": program}, partitioner=[et._partitioner()],
            compile_config=exir.EdgeCompileConfig(_check_ir_validity=False))
        counts = et.delegation_counts(edge.exported_program("step").graph_module)
        buffer = edge.to_executorch(et.backend_config(exir)).buffer
    return counts, buffer


def test_rewrites_delegate_more_and_run_exactly():
    pytest.importorskip("executorch.runtime", reason="ExecuTorch is not installed "
                                                     "(pip install executorch==1.5.1 torchao==0.18.0)")
    from executorch.runtime import Runtime

    model = _model("delta", layers=1)          # lowering re-traces every partition: one layer keeps it short
    old, _ = _lower_step(model, rewrite=False)
    new, buffer = _lower_step(model, rewrite=True)
    assert {"mean.dim", "mm.default"} <= set(old["portable_ops"])          # what the rewrites are for
    assert not {"mean.dim", "mm.default", "unsqueeze_copy.default"} & set(new["portable_ops"]), new
    assert new["portable_nodes"] < old["portable_nodes"] // 2, (old, new)
    assert new["delegated_subgraphs"] < old["delegated_subgraphs"], (old, new)

    method = Runtime.get().load_program(buffer).load_method("step")
    for batch in (1, 3):
        inputs = example_inputs(model, "step", batch_size=batch, seed=batch)
        with torch.no_grad():
            want = entry_module(model, "step")(*inputs)
        got = method.execute(list(inputs))
        for g, w in zip(got, want, strict=True):
            _close(g, w, 1e-5)


def _mamba2_like(layers: int) -> SequentialAttentionModel:
    """Mamba2's mixer parts (softplus gate, dt input scale, one key group for 4 heads, gated norm, no MLP)."""
    config = SequentialAttentionConfig(vocab_size=64, hidden_size=32, num_layers=layers, num_heads=4, head_k_dim=8,
                                       head_v_dim=8, chunk_size=16, tie_embeddings=False,
                                       mixer=MixerParts(**MAMBA2, out_norm_size=16))
    torch.manual_seed(layers)
    return SequentialAttentionModel(config).eval()


def test_mamba2_like_layers_lower_with_one_delegate_call_each():
    pytest.importorskip("executorch.runtime", reason="ExecuTorch is not installed "
                                                     "(pip install executorch==1.5.1 torchao==0.18.0)")
    from executorch import exir
    from executorch.runtime import Runtime

    from seqedge.export import executorch_target as et
    from seqedge.export.entry_points import ENTRY_POINTS
    from seqedge.quiet import quiet_libraries

    # the int64 tokens' reshape and lookup, the ones of the broadcasts, the softplus (see xnnpack_friendly)
    portable = {"embedding.default", "view_copy.default", "full.default", "gt.Scalar", "where.self", "log1p.default"}
    subgraphs = {}
    for layers in (1, 2):
        model = _mamba2_like(layers)
        with quiet_libraries():
            edge = et.lower({e: et._export_entry(xnnpack_friendly(model), e, max_batch=1) for e in ENTRY_POINTS})
        counts = {e: et.delegation_counts(edge.exported_program(e).graph_module) for e in ENTRY_POINTS}
        for entry, c in counts.items():
            assert set(c["portable_ops"]) <= portable, (entry, c)
        subgraphs[layers] = {e: c["delegated_subgraphs"] for e, c in counts.items()}
    assert all(subgraphs[2][e] == subgraphs[1][e] + 1 for e in ENTRY_POINTS), subgraphs

    program = edge.to_executorch(et.backend_config(exir)).buffer
    for entry in ENTRY_POINTS:
        inputs = example_inputs(model, entry, batch_size=1, seed=3)
        with torch.no_grad():
            want = entry_module(model, entry)(*inputs)
        got = Runtime.get().load_program(program).load_method(entry).execute(list(inputs))
        for g, w in zip(got, want, strict=True):
            _close(g, w, 1e-5)


@pytest.mark.parametrize("kernel", [2, 3, 4])
@pytest.mark.parametrize("bias", [False, True])
def test_one_token_conv_matches_the_short_conv(kernel, bias):
    """The step's conv without concatenation: the output as the short conv's (float rounding), the new tail
    exactly its last K-1 inputs; odd channel count, batch 3, a random carried tail."""
    torch.manual_seed(kernel)
    conv = ShortConv(37, kernel, bias=bias)
    if bias:
        nn.init.normal_(conv.bias)
    picked = PickedTailConv(conv, (kernel,))
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        x, tail = torch.randn(3, 1, 37, generator=gen), torch.randn(3, 37, kernel - 1, generator=gen)
        with torch.no_grad():
            (want, want_tail), (got, got_tail) = conv(x, tail, step=True), picked(x, tail, step=True)
        _close(got, want, 1e-6)
        assert torch.equal(got_tail, want_tail)
