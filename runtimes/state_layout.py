"""Where each state tensor lies in a state's one block of memory, shared by the ExecuTorch backends that copy or
write new states into pooled blocks (:mod:`.block_pool`): the C++ library's and the pybindings' large steps."""

from __future__ import annotations

import numpy as np


class StateLayout:
    """Where each state tensor of a batch lies in its state's one block: the tensors of one shape side by side, so
    that one reshape of their part of the block and its unpacking (in C) make their views, far cheaper than a view
    per tensor, which would cost a small model's step a measurable share. Per batch, the byte offsets of every
    row of every tensor and two address tables (in turn: a call reads the last state's table, writes the other)."""

    def __init__(self, dims: list[tuple[int, ...]]) -> None:
        shapes = list(dict.fromkeys(dims))                      # distinct shapes, in order of first appearance
        self.groups = [(shape, [i for i, d in enumerate(dims) if d == shape]) for shape in shapes]
        sizes = [int(np.prod(shape)) for shape in shapes]
        self.total = sum(size * len(members) for size, (_, members) in zip(sizes, self.groups))
        self._sizes = sizes
        # spec order -> position in the unpacked groups
        self._order = np.argsort([i for _, members in self.groups for i in members]).tolist()
        self._offsets: dict[int, np.ndarray] = {}
        self._tables: dict[int, tuple[tuple[np.ndarray, int], ...]] = {}
        self._n = len(dims)

    def views(self, block: np.ndarray, batch: int) -> list[np.ndarray]:
        """The state tensors ``[batch, *dims]`` in spec order, views of ``block``."""
        items: list[np.ndarray] = []
        start = 0
        for size, (shape, members) in zip(self._sizes, self.groups):
            end = start + len(members) * batch * size
            items.extend(block[start:end].reshape(len(members), batch, *shape))
            start = end
        return [items[i] for i in self._order]

    def offsets(self, batch: int) -> np.ndarray:
        """``[batch, tensors]`` byte offsets of each row of each tensor from the block's start."""
        found = self._offsets.get(batch)
        if found is None:
            found = np.empty((batch, self._n), dtype=np.int64)
            start = 0
            for size, (_, members) in zip(self._sizes, self.groups):
                for k, i in enumerate(members):
                    found[:, i] = 4 * (start + k * batch * size + np.arange(batch) * size)
                start += len(members) * batch * size
            self._offsets[batch] = found
        return found

    def tables(self, batch: int) -> tuple[tuple[np.ndarray, int], ...]:
        """The two address tables of ``batch`` rows, each with its own address."""
        found = self._tables.get(batch)
        if found is None:
            pair = [np.empty((batch, self._n), dtype=np.int64) for _ in range(2)]
            found = self._tables[batch] = tuple((t, t.ctypes.data) for t in pair)
        return found
