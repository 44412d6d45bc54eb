"""Silence the known chatter of the export libraries while a target is checked or exported.

ExecuTorch, torchao, coremltools and torch.export log and warn about their own internals (deprecated torch APIs
they call, experimental flags, legacy importlib.resources calls); none of it is something a seqedge user can act
on, and it buries the export's progress lines. Each hidden warning is listed below by its message (and, where the
text is generic, the module it comes from), with why it is harmless; any other warning, seqedge's own included,
still shows. Errors raise as usual.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator

LIBRARY_LOGGERS = ("torchao", "torch.utils._pytree", "executorch", "coremltools", "torch.onnx", "onnxscript")

# (category, message regex matched at the start of the message, module regex or "" for any, why it is harmless)
HIDDEN_WARNINGS: tuple[tuple[type[Warning], str, str, str], ...] = (
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated", "",
     "torch's pytree deprecation, raised inside torch.export and torchao's tree handling"),
    (DeprecationWarning, r"`torch\.jit\.(trace|trace_method|script_method)` is deprecated", "",
     "coremltools converts from a torch.jit trace; torch deprecates the API, the trace is still what it needs"),
    (DeprecationWarning, r"(open_text|read_text|read_binary) is deprecated\. Use files\(\) instead", "",
     "ExecuTorch reads its schema files with the legacy importlib.resources API"),
    (Warning, r"This API is experimental and subject to change without notice", "",
     "ExecuTorch's pybindings mark the runtime API experimental on import"),
    (UserWarning, r"'has_(cuda|cudnn|mkldnn|mps)' is deprecated", "",
     "coremltools walks torch.backends' attributes, some of which torch deprecates"),
    (UserWarning, r"Anomaly Detection has been enabled", "",
     "torch.export's AOT tracing turns anomaly mode on while it traces the exported program"),
    (Warning, r"Converting a tensor to a Python (boolean|integer) might cause the trace to be incorrect",
     r"seqedge\.", "seqedge's input checks run once on the example inputs while coremltools traces; the traced "
                   "graph is meant to hold the shapes they checked"),
)


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Within the block: library loggers at ERROR, the warnings of :data:`HIDDEN_WARNINGS` ignored."""
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        for category, message, module, _why in HIDDEN_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
