"""The interface every export target implements, and the registry of targets (a plain dict, loaded lazily)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from seqedge.artifact import Variant
from seqedge.model import SequentialAttentionModel
from seqedge.registry import instantiate

from .quantization import QuantizationRecipe

# The largest batch the compiled targets (executorch, tensorrt) take by default; ONNX graphs take any batch.
DEFAULT_MAX_BATCH = 8
# ExecuTorch re-traces the depthwise conv1d, and torch's conv-backend heuristic guards on ``batch < 16`` for a
# batch hint below 16: larger bounds would be cut to 15.
MAX_BATCH_LIMIT = 15


def check_max_batch(max_batch: int) -> int:
    """``max_batch`` if it is an integer in [1, MAX_BATCH_LIMIT], else ValueError saying what each value means."""
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or not 1 <= max_batch <= MAX_BATCH_LIMIT:
        raise ValueError(f"max_batch must be an integer in [1, {MAX_BATCH_LIMIT}] (1: single-stream programs "
                         f"with the least memory; ExecuTorch plans memory for the largest batch, and torch caps "
                         f"a dynamic conv batch below 16), got {max_batch!r}")
    return max_batch


@dataclass
class ExportContext:
    """What a target needs to write its files: the model, where to write, the recipe, a progress callback.

    ``root`` is the artifact directory under construction (a temp dir renamed into place when every target
    succeeded); ``variants`` holds those already written in this export (TensorRT builds from the ONNX one).
    ``max_batch``: the largest batch the compiled targets take (ExecuTorch plans memory for it, TensorRT builds
    its profile to it); 1 compiles single-stream programs, the least memory a device app can run in.
    """

    model: SequentialAttentionModel
    root: Path
    quantization: QuantizationRecipe
    progress: Callable[[str], None] = lambda message: None
    variants: list[Variant] = field(default_factory=list)
    max_batch: int = DEFAULT_MAX_BATCH

    def __post_init__(self) -> None:
        check_max_batch(self.max_batch)

    def target_dir(self, target: str) -> Path:
        path = self.root / target / self.quantization.tag
        path.mkdir(parents=True, exist_ok=True)
        return path


class ExportTarget(Protocol):
    """One export target (onnx, executorch, coreml, tensorrt): one module, one class."""

    name: str
    install_hint: str            # e.g. "pip install 'seqedge[onnx]'"
    schemes: tuple[str, ...]     # quantization schemes it supports

    def check_available(self) -> None:
        """Raise ImportError naming the exact `pip install` when the target's library is missing."""

    def export(self, ctx: ExportContext) -> Variant:
        """Write the target's files under ``ctx.target_dir(name)`` and describe them as a Variant."""


# target name -> "module:Class"; modules import their heavy libraries lazily.
TARGETS: dict[str, str] = {
    "onnx": "seqedge.export.onnx_target:OnnxTarget",
    "onnx-ort": "seqedge.export.onnx_ort_target:OnnxOrtTarget",
    "executorch": "seqedge.export.executorch_target:ExecuTorchTarget",
    "coreml": "seqedge.export.coreml_target:CoreMLTarget",
    "tensorrt": "seqedge.export.tensorrt_target:TensorRTTarget",
}


def get_target(name: str) -> ExportTarget:
    return instantiate(TARGETS, name, "export target", " or 'all'")
