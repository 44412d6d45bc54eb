"""ExecuTorch's XNNPACK thread pool: one per process, sized by the ExecuTorch sessions seqedge opens.

XNNPACK splits every operator of a step over the pool's threads. For a small model's step (a hundred tiny
operators) the hand-offs cost more than the second thread gains: one thread is faster than two
(``benchmarks/results/step_overhead.md``). So, as for ONNX Runtime
(:mod:`.threads`), the thread count is chosen from the model's size, and a session may ask for its own.

The pool can only be resized while no XNNPACK program is loaded: each delegate keeps the pool it was created with,
and a step of a program loaded before a resize aborts the process. seqedge therefore resizes only when none of the
ExecuTorch sessions it opened is alive; while one is, a session that asked for another count gets a ValueError
naming the count in use, and one that asked for nothing runs on the pool as it is. ExecuTorch programs loaded
outside seqedge in the same process are not seen: close them before loading a seqedge ExecuTorch session with a
thread count other than the pool's.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import weakref
from typing import Any

_open: weakref.WeakSet = weakref.WeakSet()      # ExecuTorch backends alive in this process
_default: list[int] = []                         # ExecuTorch's own pool size, read before any resize
LOCK = threading.Lock()     # held from sizing the pool to registering the backend that loads programs on it


def _portable_lib() -> Any:
    from executorch.extension.pybindings import portable_lib

    return portable_lib


def pool_size() -> int:
    """Threads of the process's XNNPACK pool now."""
    return int(_portable_lib()._threadpool_get_thread_count())


def size_pool(wanted: int | None, explicit: bool) -> int:
    """Make the pool ``wanted`` threads (None: ExecuTorch's default) if it can be resized now; returns the size
    the next session runs with. ``explicit``: the caller asked for ``wanted`` (a mismatch that cannot be resized
    raises instead of running on the pool as it is)."""
    if not _default:
        _default.append(pool_size())
    target, current = wanted or _default[0], pool_size()
    if target == current:
        return current
    if _open:
        gc.collect()            # a session dropped in a reference cycle would otherwise hold the pool
    if _open:
        if explicit:
            raise ValueError(f"threads={wanted}: ExecuTorch's XNNPACK thread pool is one per process, and "
                             f"{len(_open)} ExecuTorch session(s) running on {current} thread(s) are still open "
                             f"(a program loaded before a resize would abort); close them first, or load with "
                             f"threads={current}")
        return current
    _reset(target)
    return pool_size()


def _reset(threads: int) -> None:
    """Resize the pool, without the line ExecuTorch's C++ logger writes to stderr for it (a seqedge user cannot
    act on it)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        _portable_lib()._unsafe_reset_threadpool(threads)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def register(backend: Any) -> None:
    """Count ``backend`` as holding XNNPACK programs until it is garbage."""
    _open.add(backend)
