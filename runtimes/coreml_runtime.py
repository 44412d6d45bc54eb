"""Core ML runtime: runs the ``step`` and ``chunk`` functions of a coreml variant's ``model.mlpackage``.

Core ML predicts on macOS only (15+ for multifunction packages; the same package runs on iOS 18 through the
Core ML framework). Elsewhere ``check_available`` raises RuntimeUnavailable. Batch is fixed at 1 (as exported);
tokens go in as int32 and state names follow ``Variant.info["feature_names"]`` (``state.0`` -> ``state_0``).
"""

from __future__ import annotations

import platform
from typing import Any

import numpy as np

from seqedge.artifact import Manifest, Variant

from .base import RuntimeUnavailable

NEEDS = ("the coreml runtime needs macOS 15+ (or iOS 18, through the Core ML framework) and Core ML; "
         "Core ML cannot predict on {system}. The exported .mlpackage can be inspected here; run it on a Mac "
         "(pip install coremltools==9.0) or use runtime='onnxruntime' on this machine")


def _macos_version() -> tuple[int, ...] | None:
    if platform.system() != "Darwin":
        return None
    release = platform.mac_ver()[0]
    return tuple(int(p) for p in release.split(".") if p.isdigit()) or (0,)


class CoreMLRuntime:
    runtime = "coreml"
    target = "coreml"

    def check_available(self) -> None:
        version = _macos_version()
        if version is None:
            raise RuntimeUnavailable(NEEDS.format(system=platform.system() or "this OS"))
        if version < (15,):
            raise RuntimeUnavailable(NEEDS.format(system=f"macOS {platform.mac_ver()[0]} (multifunction packages "
                                                         "need macOS 15+)"))
        try:
            import coremltools  # noqa: F401
        except ImportError:
            raise ImportError("the coreml runtime needs coremltools: pip install 'coremltools==9.0'") from None

    def open(self, manifest: Manifest, variant: Variant, **options: Any) -> "CoreMLBackend":
        self.check_available()
        compute_units = options.pop("compute_units", "ALL")
        if options:
            raise ValueError(f"the coreml runtime takes only compute_units, got {sorted(options)}")
        return CoreMLBackend(manifest, variant, compute_units)


class CoreMLBackend:
    runtime = "coreml"
    target = "coreml"

    def __init__(self, manifest: Manifest, variant: Variant, compute_units: str) -> None:
        import coremltools as ct

        for role in variant.files:                      # every file of the package, checked against its sha256
            manifest.path(variant, role)
        package = manifest.inside(variant.info["package"])      # confined like every file path
        units = getattr(ct.ComputeUnit, compute_units, None)
        if units is None:
            raise ValueError(f"compute_units must be one of {[u.name for u in ct.ComputeUnit]}, got {compute_units!r}")
        self.variant = variant
        self.names = variant.info["feature_names"]
        self.state_names = [s.name for s in manifest.state_specs]
        self.batch_sizes = list(variant.info.get("batch_sizes", [1]))
        self.compute_units = compute_units
        self.models = {f: ct.models.MLModel(str(package), compute_units=units, function_name=f)
                       for f in variant.info["functions"]}

    def run(self, entry: str, tokens: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        batch = tokens.shape[0]
        if batch not in self.batch_sizes:
            raise ValueError(f"the coreml export {self.variant.name} takes batch {self.batch_sizes}, got {batch}; "
                             "run sequences one at a time")
        feeds = {self.names["tokens"]: tokens.astype(np.int32)}
        feeds.update({self.names[n]: np.ascontiguousarray(s, np.float32) for n, s in zip(self.state_names, state)})
        out = self.models[entry].predict(feeds)
        logits = np.asarray(out[self.names["logits"]], np.float32)
        return logits, [np.asarray(out[self.names[f"new_{n}"]], np.float32) for n in self.state_names]

    def describe(self) -> dict[str, Any]:
        return {"device": platform.platform(), "compute_units": self.compute_units,
                "compute_precision": self.variant.info.get("compute_precision")}
