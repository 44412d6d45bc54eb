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

import functools
import gc
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

_open: weakref.WeakSet = weakref.WeakSet()      # ExecuTorch backends alive in this process
_lock = threading.Lock()     # held from sizing the pool to registering the backend that loads programs on it
Backend = TypeVar("Backend")


def _portable_lib() -> Any:
    from executorch.extension.pybindings import portable_lib

    return portable_lib


def pool_size() -> int:
    """Threads of the process's XNNPACK pool now."""
    return int(_portable_lib()._threadpool_get_thread_count())


@functools.cache
def _default_size() -> int:
    """ExecuTorch's own pool size: read once, before seqedge first resizes it."""
    return pool_size()


def open_on_pool(make: Callable[[int], Backend], wanted: int | None, explicit: bool) -> Backend:
    """``make(threads)`` (a backend that loads XNNPACK programs) on a pool of ``wanted`` threads (None:
    ExecuTorch's default), resized first if no backend opened here is alive; the backend counts as holding the
    pool until it is garbage. ``explicit``: the caller asked for ``wanted``, so a pool that cannot be resized
    raises instead of being used as it is."""
    with _lock:
        default = _default_size()                   # read before any resize, whatever is wanted this time
        backend = make(_size_pool(wanted or default, wanted, explicit))
        _open.add(backend)
        return backend


def _size_pool(target: int, wanted: int | None, explicit: bool) -> int:
    """The pool resized to ``target`` where it can be; the size the next backend runs with."""
    current = pool_size()
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
