"""Silence the import and deprecation chatter of the export libraries while a target is checked or exported.

ExecuTorch, torchao, coremltools and torch.export log and warn about their own internals (optional native
extensions that do not load on this platform, deprecated pytree APIs, untested torch versions); none of it is
something a seqedge user can act on, and it buries the export's progress lines. Errors still raise as usual.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator

LIBRARY_LOGGERS = ("torchao", "torch.utils._pytree", "executorch", "coremltools", "torch.onnx", "onnxscript")


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Within the block: library loggers at ERROR, library Future/Deprecation/User warnings ignored."""
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
