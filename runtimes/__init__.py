"""Runtimes: one Session API over torch, onnxruntime, executorch, coreml and tensorrt.

Torch-free except the torch runtime itself: an artifact runs with only its runtime's library installed.
"""

from seqedge.state import State

from .base import RUNTIMES, RuntimeUnavailable
from .session import Session, load

__all__ = ["RUNTIMES", "RuntimeUnavailable", "Session", "State", "load"]
