"""The interface every export target implements, and the registry of targets (a plain dict, loaded lazily)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from seqedge.artifact import Variant
from seqedge.model import SequentialAttentionModel
from seqedge.registry import instantiate

from .quantization import QuantizationRecipe


@dataclass
class ExportContext:
    """What a target needs to write its files: the model, where to write, the recipe, a progress callback.

    ``root`` is the artifact directory under construction (a temp dir renamed into place when every target
    succeeded); ``variants`` holds those already written in this export (TensorRT builds from the ONNX one).
    """

    model: SequentialAttentionModel
    root: Path
    quantization: QuantizationRecipe
    progress: Callable[[str], None] = lambda message: None
    variants: list[Variant] = field(default_factory=list)

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
