"""Load-time check that a compiled graph's own inputs/outputs are the ones its manifest describes.

A manifest that passed its schema can still sit next to graphs of another model (files swapped, a state shape
edited together with its hashes). Runtimes that can list a graph's signature (ONNX Runtime's ``get_inputs``,
ExecuTorch's method meta) compare it here when the artifact is opened, so the mismatch is one line naming the
tensor instead of an error deep inside the backend at the first call. Never called per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from seqedge.artifact import ArtifactError, Manifest


@dataclass(frozen=True)
class TensorSig:
    """One graph input/output: name (None where the runtime has no names), dims (int, or None when symbolic),
    dtype (numpy name, or None when the runtime does not say)."""

    name: str | None
    dims: tuple[int | None, ...]
    dtype: str | None


def expected_signature(manifest: Manifest, entry: str) -> tuple[list[TensorSig], list[TensorSig]]:
    """Inputs and outputs of ``entry`` ("step" or "chunk") as the manifest describes them (batch symbolic)."""
    chunk = manifest.chunk_size
    tokens = (None,) if entry == "step" else (None, chunk)
    logits = (None, manifest.vocab_size) if entry == "step" else (None, chunk, manifest.vocab_size)
    states = [(s.name, tuple(None if d == "batch" else int(d) for d in s.shape), s.dtype)
              for s in manifest.state_specs]
    inputs = [TensorSig("tokens", tokens, "int64")] + [TensorSig(n, d, t) for n, d, t in states]
    outputs = [TensorSig("logits", logits, "float32")] + [TensorSig(f"new_{n}", d, t) for n, d, t in states]
    return inputs, outputs


def _mismatch(want: TensorSig, got: TensorSig) -> str | None:
    if got.name is not None and got.name != want.name:
        return f"is named {got.name!r}, expected {want.name!r}"
    if len(got.dims) != len(want.dims):
        return f"has rank {len(got.dims)}, expected {len(want.dims)} {list(want.dims)}"
    for axis, (w, g) in enumerate(zip(want.dims, got.dims)):
        if w is not None and g is not None and w != g:
            return f"has size {g} on axis {axis}, expected {w} (shape {list(got.dims)} vs {list(want.dims)})"
    if got.dtype is not None and want.dtype is not None and got.dtype != want.dtype:
        return f"has dtype {got.dtype}, expected {want.dtype}"
    return None


def check_signature(manifest: Manifest, entry: str, graph: Path, inputs: Sequence[TensorSig],
                    outputs: Sequence[TensorSig]) -> None:
    """ArtifactError naming the first input/output of ``graph`` that disagrees with the manifest."""
    want_in, want_out = expected_signature(manifest, entry)
    for kind, want, got in (("input", want_in, inputs), ("output", want_out, outputs)):
        if len(got) != len(want):
            raise ArtifactError(f"{graph} ({entry}) has {len(got)} {kind}s, the manifest of {manifest.root} "
                                f"describes {len(want)}; the graph belongs to another model: re-run "
                                "`seqedge export`")
        for i, (w, g) in enumerate(zip(want, got)):
            problem = _mismatch(w, g)
            if problem:
                raise ArtifactError(f"{graph} ({entry}) {kind} {i} ({w.name}) {problem}, as the manifest of "
                                    f"{manifest.root} says; the graph belongs to another model: re-run "
                                    "`seqedge export`")
