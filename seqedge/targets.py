"""Export targets and the runtimes that run them: the one table every command and report reads names from.

A target is a file format an artifact holds (``onnx``, ``executorch``, ...); a runtime is the library that runs
it (``onnxruntime``, ...). ``torch`` is both: the float64 reference variant every artifact carries.
"""

from __future__ import annotations

from typing import Sequence

# target -> the runtime that runs its variants
RUNTIME_OF_TARGET: dict[str, str] = {
    "torch": "torch",
    "onnx": "onnxruntime",
    "onnx-ort": "onnxruntime-fused",
    "executorch": "executorch",
    "coreml": "coreml",
    "tensorrt": "tensorrt",
}
# runtimes beyond each target's own -> the target they run: cuda runs the torch variant on an NVIDIA GPU
TARGET_OF_OTHER_RUNTIMES: dict[str, str] = {"cuda": "torch"}
RUNTIMES: tuple[str, ...] = (*RUNTIME_OF_TARGET.values(), *TARGET_OF_OTHER_RUNTIMES)
TARGETS: tuple[str, ...] = tuple(t for t in RUNTIME_OF_TARGET if t != "torch")     # what `seqedge export` writes
# other spellings users reach for (a target's name, a short form) -> the runtime they mean
RUNTIME_ALIASES: dict[str, str] = {"onnx": "onnxruntime", "ort": "onnxruntime", "onnx-ort": "onnxruntime-fused",
                                   "ort-fused": "onnxruntime-fused", "et": "executorch", "trt": "tensorrt"}


def resolve_runtime(name: str, known: Sequence[str] = RUNTIMES) -> str:
    """The runtime ``name`` means: a name in ``known`` (the runtime registry's names) as is, a target name or short
    form through :data:`RUNTIME_ALIASES`; ValueError listing the valid names otherwise."""
    return resolve_runtimes([name], known)[0]


def resolve_runtimes(names: Sequence[str] | None, known: Sequence[str] = RUNTIMES) -> list[str] | None:
    """:func:`resolve_runtime` of each name, duplicates dropped, order kept; None stays None (every runtime)."""
    if names is None:
        return None
    names = [n.strip() for n in names]
    unknown = [n for n in names if n not in known and n not in RUNTIME_ALIASES]
    if unknown:
        raise ValueError(f"unknown runtime(s) {unknown}; valid runtimes are {', '.join(known)} (a target name "
                         "such as onnx or onnx-ort also names its runtime)")
    return list(dict.fromkeys(n if n in known else RUNTIME_ALIASES[n] for n in names))
