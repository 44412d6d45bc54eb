"""Float32 blocks handed out as numpy arrays and taken back once no array over them is alive.

A decode loop that does not donate its state (``state = session.step(tokens, state)[1]``) drops each old state
right after the step that read it. Were each new state a fresh allocation, every step would write its state into
memory not yet in cache (for a block past malloc's mmap threshold, fresh pages too). With the pool, the loop's
states alternate between two blocks that stay warm. A block is reused only once nothing can reach it: its
arrays' base is a ctypes object whose ``__del__`` gives the block back, and every view numpy makes of them (by
slicing, reshaping, ``torch.from_numpy`` or an ONNX Runtime value) keeps that base alive, so the rule is the one
malloc follows.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np


def _give_back(lease: Any) -> None:
    free = lease.free
    if len(free) < lease.keep:
        free.append((lease.owned, lease.address))


class BlockPool:
    """Per block size, up to ``keep`` idle blocks for the next ``take``; more are freed as usual."""

    def __init__(self, keep: int = 2) -> None:
        if keep < 0:
            raise ValueError(f"keep must be at least 0, got {keep}")
        self.keep = keep
        self._free: dict[int, list[tuple[np.ndarray, int]]] = {}
        self._lease_types: dict[int, type] = {}

    def take(self, numel: int) -> tuple[np.ndarray, int]:
        """A writable float32 array of ``numel`` elements (contents undefined) and its address."""
        free = self._free.get(numel)
        if free is None:
            free = self._free[numel] = []
            self._lease_types[numel] = type("_Lease", (ctypes.c_char * (4 * numel),), {"__del__": _give_back})
        try:
            owned, address = free.pop()
        except IndexError:
            owned = np.empty(numel, dtype=np.float32)
            address = owned.ctypes.data
        lease = self._lease_types[numel].from_address(address)
        lease.owned, lease.address, lease.free, lease.keep = owned, address, free, self.keep
        return np.frombuffer(lease, dtype=np.float32), address

    def idle(self, numel: int) -> int:
        """How many blocks of ``numel`` elements wait for a ``take``."""
        return len(self._free.get(numel, ()))
