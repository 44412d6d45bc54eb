"""Torch runtime: runs the artifact's ``torch`` variant (``config.json`` + ``model.safetensors``) in eager PyTorch.

float32 by default (what a user runs); ``dtype="float64"`` gives the reference that parity is measured against
(state and logits then come back as float64 arrays).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from seqedge.artifact import ArtifactError, Manifest, Variant

from .base import RuntimeUnavailable

DTYPES = ("float32", "float64")


class TorchBackend:
    runtime = "torch"
    target = "torch"

    def __init__(self, model, dtype: str, threads: int | None) -> None:
        import torch

        self._torch = torch
        self.model = model
        self.dtype = getattr(torch, dtype)
        self.state_dtype = dtype             # the dtype the states it returns (and accepts) have
        self.threads = threads

    def run(self, entry: str, tokens: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        torch = self._torch
        if entry not in ("step", "chunk"):
            raise ValueError(f"unknown entry point {entry!r}; valid ones are ['step', 'chunk']")
        tok = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64))
        # a copy: states from another runtime may be read-only views (torch warns on those and never needs them)
        tensors = [torch.tensor(np.asarray(s), dtype=self.dtype) for s in state]
        with torch.inference_mode():
            if entry == "step":
                logits, new = self.model.forward_tensors(tok[:, None], tensors, step=True)
                logits = logits[:, 0]
            else:
                logits, new = self.model.forward_tensors(tok, tensors)
        np_dtype = np.float64 if self.dtype == torch.float64 else np.float32
        return logits.numpy().astype(np_dtype, copy=False), [t.numpy().astype(np_dtype, copy=False) for t in new]

    def describe(self) -> dict[str, Any]:
        return {"device": "cpu", "dtype": str(self.dtype).replace("torch.", ""),
                "threads": self._torch.get_num_threads()}


def load_checked_model(manifest: Manifest, variant: Variant):
    """The torch variant's model (float32, CPU, eval mode), checked against the manifest's fingerprint."""
    from seqedge.model import load_pretrained
    from seqedge.state import model_fingerprint

    folder = manifest.checkpoint_dir(variant)
    model = load_pretrained(folder).eval()
    if model_fingerprint(model.config) != manifest.fingerprint:
        raise ArtifactError(f"{folder}/config.json does not describe the model of {manifest.root}/manifest.json "
                            "(fingerprint mismatch); re-run `seqedge export`")
    return model


class TorchRuntime:
    runtime = "torch"
    target = "torch"

    def check_available(self) -> None:
        try:
            import safetensors  # noqa: F401
            import torch  # noqa: F401
        except ImportError as err:
            raise ImportError(f"the torch runtime needs torch and safetensors ({err}); run: "
                              "pip install torch safetensors") from None

    def open(self, manifest: Manifest, variant: Variant, *, dtype: str = "float32", threads: int | None = None,
             **options: Any) -> TorchBackend:
        if options:
            raise ValueError(f"unknown option(s) {sorted(options)} for the torch runtime; valid: dtype, threads")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
        if variant.target != "torch":
            raise RuntimeUnavailable(f"the torch runtime runs torch variants, not {variant.name}")
        model = load_checked_model(manifest, variant)
        if threads is not None:
            import torch

            torch.set_num_threads(int(threads))
        return TorchBackend(model.to(getattr(__import__("torch"), dtype)), dtype, threads)
