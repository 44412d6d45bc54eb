"""seqedge: Sequential Attention language models, from training to devices.

Importing this package is light: torch is imported only when a model is touched, and onnx, executorch,
coremltools, TensorRT and CUDA never are.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .config import SequentialAttentionConfig
from .state import State, StateSpec
from .tokenizer import ByteTokenizer

__version__ = "0.2.0"

_LAZY = {
    "SequentialAttentionModel": ("seqedge.model", "SequentialAttentionModel"),
    "save_pretrained": ("seqedge.checkpoint", "save_pretrained"),
    "load_pretrained": ("seqedge.model", "load_pretrained"),
    "load": ("seqedge.runtimes", "load"),
    "load_default": ("seqedge.defaults", "load_default"),
}

__all__ = ["ByteTokenizer", "SequentialAttentionConfig", "State", "StateSpec", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'seqedge' has no attribute {name!r}")
