"""Tiny exported artifacts shared by the export/runtime/parity tests: built once per session, read-only."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqedge.config import SequentialAttentionConfig

# the TINY_DIMS of conftest, with dk = dv = 16 as the export tests' brief asks
EXPORT_DIMS = dict(hidden_size=32, num_layers=2, num_heads=2, head_k_dim=16, head_v_dim=16, gate_rank=4,
                   chunk_size=16, mlp_multiple_of=16)
SCHEMES = ("none", "fp16", "int8", "int4")
RULES = ("gated", "delta")

_CACHE: dict[str, Path] = {}
_REFERENCE: dict[tuple, object] = {}


def export_config(rule: str) -> SequentialAttentionConfig:
    return SequentialAttentionConfig(**EXPORT_DIMS, update_rule=rule)


def tiny_model(rule: str, seed: int = 0):
    import torch

    from seqedge.model import SequentialAttentionModel

    torch.manual_seed(seed)
    return SequentialAttentionModel(export_config(rule)).eval()


def onnx_artifact(tmp_path_factory: pytest.TempPathFactory, rule: str) -> Path:
    """An artifact of the seed-0 tiny model (``rule``) with onnx none/fp16/int8/int4 and the torch variant."""
    if rule not in _CACHE:
        from seqedge.evaluate.export_check import export_verified as export_model

        out = tmp_path_factory.mktemp(f"artifact-{rule}") / "art"
        export_model(tiny_model(rule), out, ["onnx"], list(SCHEMES), progress=False)
        _CACHE[rule] = out
    return _CACHE[rule]


def reference(artifact: Path, tokens, prefill: int):
    """The float64 reference stream of ``artifact`` (cached per artifact, stream and split)."""
    from seqedge.evaluate.parity import reference_stream

    key = (str(artifact), tuple(int(t) for t in tokens), prefill)
    if key not in _REFERENCE:
        _REFERENCE[key] = reference_stream(artifact, tokens, prefill)
    return _REFERENCE[key]
