"""The tiny models of the test suite, in one place: their dimensions, a seeded builder, and exported artifacts
built once per session (read-only). conftest.py turns these into fixtures; test modules import the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from seqedge.config import SequentialAttentionConfig

# Small enough for the float64 reference and per-token loops, large enough to have several heads, layers and a
# sequence that spans more than one chunk.
TINY_DIMS: dict[str, Any] = dict(hidden_size=32, num_layers=2, num_heads=2, head_k_dim=16, head_v_dim=8,
                                 gate_rank=4, chunk_size=16, mlp_multiple_of=16)
# exported models use dk = dv, the shape every target's fused or packed paths are checked at
EXPORT_DIMS: dict[str, Any] = {**TINY_DIMS, "head_v_dim": 16}
# GLA's mixer parts (seqedge/families/gla.py): logsigmoid gate, no beta, no short conv (scan-only state), no skip
GLA_MIXER: dict[str, Any] = dict(gate="logsigmoid", gate_normalizer=16.0, beta="none", short_conv=False,
                                 qk_norm="none", skip=False)
SCHEMES = ("none", "fp16", "int8", "int4")
RULES = ("gated", "delta")

_CACHE: dict[str, Path] = {}
_REFERENCE: dict[tuple, object] = {}


def build_model(config: SequentialAttentionConfig, seed: int = 0):
    """A randomly initialised model of ``config`` in eval mode; ``seed`` fixes its weights."""
    import torch

    from seqedge.model import SequentialAttentionModel

    torch.manual_seed(seed)
    return SequentialAttentionModel(config).eval()


def export_config(rule: str, **overrides: Any) -> SequentialAttentionConfig:
    return SequentialAttentionConfig(**{**EXPORT_DIMS, **overrides}, update_rule=rule)


def tiny_model(rule: str, seed: int = 0, **overrides: Any):
    """The export tests' tiny model (``EXPORT_DIMS`` with ``overrides``, e.g. ``num_layers=1``)."""
    return build_model(export_config(rule, **overrides), seed)


def onnx_artifact(tmp_path_factory: pytest.TempPathFactory, rule: str) -> Path:
    """An artifact of the seed-0 tiny model (``rule``) with onnx none/fp16/int8/int4 and the torch variant."""
    if rule not in _CACHE:
        from seqedge.evaluate.export_check import export_verified as export_model

        out = tmp_path_factory.mktemp(f"artifact-{rule}") / "art"
        export_model(tiny_model(rule), out, ["onnx"], list(SCHEMES), progress=False)
        _CACHE[rule] = out
    return _CACHE[rule]


def ort_artifact(tmp_path_factory: pytest.TempPathFactory, rule: str) -> Path:
    """An artifact of the seed-0 tiny model (``rule``) with onnx (portable) and onnx-ort at fp32 and int8."""
    key = f"ort-{rule}"
    if key not in _CACHE:
        from seqedge.evaluate.export_check import export_verified as export_model

        out = tmp_path_factory.mktemp(key) / "art"
        export_model(tiny_model(rule), out, ["onnx", "onnx-ort"], ["none", "int8"], progress=False)
        _CACHE[key] = out
    return _CACHE[key]


def reference(artifact: Path, tokens, prefill: int):
    """The float64 reference stream of ``artifact`` (cached per artifact, stream and split)."""
    from seqedge.evaluate.parity import reference_stream

    key = (str(artifact), tuple(int(t) for t in tokens), prefill)
    if key not in _REFERENCE:
        _REFERENCE[key] = reference_stream(artifact, tokens, prefill)
    return _REFERENCE[key]
