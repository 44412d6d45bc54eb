"""ExecuTorch through seqedge's C++ runner library (``runners/cpp``: ``libseqedge.so``) instead of the Python
pybindings: ``seqedge.load(dir, "executorch", library="build/cpp/libseqedge.so")``.

The library runs the artifact's program with ExecuTorch's C++ runtime on the caller's buffers
(``seqedge_run_buffers``): the tokens and the state go in as the numpy arrays' memory, the new state is copied
into numpy arrays, and nothing is converted to torch tensors, which is most of what a step through the pybindings
costs beyond the program itself on a small model. The C API takes one sequence per call, so a batch runs its rows
one after another (a row's state is a contiguous slice of each batch array). The library is built from the
source tree (README, "Native runner"); it checks the manifest and the program's sha256 itself when it opens.
"""

from __future__ import annotations

import ctypes
import operator
import threading
from pathlib import Path
from typing import Any

import numpy as np

from seqedge.artifact import Manifest, Variant

from .base import RuntimeUnavailable
from .block_pool import BlockPool
from .state_layout import StateLayout

# seqedge_status codes (runners/cpp/include/seqedge.h) -> the Python exception each becomes
_ERRORS = {1: ValueError, 2: ValueError, 3: OSError, 4: ValueError, 5: ValueError, 6: RuntimeError, 7: RuntimeError}


class _Info(ctypes.Structure):
    """``seqedge_info``."""

    _fields_ = [("vocab_size", ctypes.c_int64), ("chunk_size", ctypes.c_int64),
                ("num_state_tensors", ctypes.c_int64), ("state_bytes", ctypes.c_int64),
                ("bos_id", ctypes.c_int64), ("eos_id", ctypes.c_int64), ("pad_id", ctypes.c_int64),
                ("fingerprint", ctypes.c_char_p), ("variant", ctypes.c_char_p), ("threads", ctypes.c_int64)]


def open_library(path: str | Path) -> ctypes.CDLL:
    """``libseqedge.so`` at ``path`` with the prototypes this module calls; RuntimeUnavailable when it is missing
    or lacks them (an older build)."""
    path = Path(path)
    if not path.is_file():
        raise RuntimeUnavailable(f"no seqedge C++ library at {path}; build it with `cmake -S runners/cpp -B build/cpp "
                                 "... && cmake --build build/cpp` (README, \"Native runner\")")
    try:
        lib = ctypes.CDLL(str(path))
        fns = {name: getattr(lib, name) for name in (
            "seqedge_last_error", "seqedge_set_runtime_logging", "seqedge_open_threads", "seqedge_close",
            "seqedge_get_info", "seqedge_get_state_numel", "seqedge_run_buffers")}
    except (OSError, AttributeError) as err:
        raise RuntimeUnavailable(f"{path} is not a usable seqedge C++ library ({err}); rebuild it from "
                                 "runners/cpp") from None
    p, i64, size = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t
    fns["seqedge_last_error"].restype = ctypes.c_char_p
    fns["seqedge_last_error"].argtypes = []
    fns["seqedge_set_runtime_logging"].argtypes = [ctypes.c_int]
    fns["seqedge_set_runtime_logging"].restype = None
    fns["seqedge_open_threads"].argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(p)]
    fns["seqedge_close"].argtypes = [p]
    fns["seqedge_get_info"].argtypes = [p, ctypes.POINTER(_Info)]
    fns["seqedge_get_state_numel"].argtypes = [p, i64, ctypes.POINTER(i64)]
    # addresses as plain integers: the step's hot call converts no objects
    fns["seqedge_run_buffers"].argtypes = [p, p, size, p, p, p, size]
    for name in ("seqedge_open_threads", "seqedge_close", "seqedge_get_info", "seqedge_get_state_numel",
                 "seqedge_run_buffers"):
        fns[name].restype = ctypes.c_int
    return lib


class NativeExecuTorchBackend:
    """One artifact's ExecuTorch variant opened through ``libseqedge``."""

    runtime = "executorch"
    target = "executorch"

    def __init__(self, manifest: Manifest, variant: Variant, library: str | Path, threads: int | None,
                 blocks: BlockPool | None = None) -> None:
        self.library = Path(library)
        self._lib = open_library(self.library)
        self._lib.seqedge_set_runtime_logging(0)
        handle = ctypes.c_void_p()
        self._check(self._lib.seqedge_open_threads(str(manifest.root).encode(), variant.tag.encode(),
                                                   0 if threads is None else int(threads), ctypes.byref(handle)))
        self._model = handle.value
        info = _Info()
        self._check(self._lib.seqedge_get_info(self._model, ctypes.byref(info)))
        self.threads = int(info.threads)
        self.vocab_size, self.chunk_size = int(info.vocab_size), int(info.chunk_size)
        self.numel = []
        for i in range(int(info.num_state_tensors)):
            n = ctypes.c_int64()
            self._check(self._lib.seqedge_get_state_numel(self._model, i, ctypes.byref(n)))
            self.numel.append(int(n.value))
        self.program = manifest.path(variant, "program")
        # the library read the same manifest; a disagreement means a library of another seqedge version
        want = [int(np.prod(s.concrete_shape(1))) for s in manifest.state_specs]
        if self.numel != want or self.vocab_size != manifest.config.vocab_size:
            self.close()
            raise RuntimeUnavailable(f"{self.library} reads this artifact's state as {self.numel} elements and "
                                     f"{info.vocab_size} logits, Python as {want} and {manifest.config.vocab_size}: "
                                     "rebuild the library from this seqedge's runners/cpp")
        self._run = self._lib.seqedge_run_buffers
        self._sizes = np.array(self.numel, dtype=np.int64)
        self._layout = StateLayout([tuple(s.concrete_shape(1)[1:]) for s in manifest.state_specs])
        # new states go to blocks the dropped states of this batch size gave back (block_pool says why)
        self._blocks = BlockPool() if blocks is None else blocks
        # calls from two threads take turns: the model handle, the token buffer and the tables are one each
        self._lock = threading.Lock()
        self._ids = np.zeros(self.chunk_size, dtype=np.int64)
        self._ids_at = self._ids.ctypes.data
        # the new state the last call returned (this backend's own arrays, views of one block) and the table of its
        # rows' addresses ([batch, tensors] int64, with its own address) that the next call reads them through
        self._last_out: list[np.ndarray] = []
        self._last_table: tuple[np.ndarray, int] | None = None

    def _check(self, status: int) -> None:
        if status != 0:
            message = self._lib.seqedge_last_error().decode(errors="replace")
            raise _ERRORS.get(status, RuntimeError)(f"seqedge C++ runtime: {message}")

    def run(self, entry: str, tokens: np.ndarray, state: list[Any]) -> tuple[np.ndarray, list[np.ndarray]]:
        if entry not in ("step", "chunk"):
            raise ValueError(f"unknown entry point {entry!r}; valid ones are ['step', 'chunk']")
        with self._lock:
            batch = tokens.shape[0]
            inputs = state                                  # held until the call has returned
            if self._is_last_out(state):
                table_in = self._last_table
            else:
                inputs = [_float32_rows(s) for s in state]
                bases = np.array([a.ctypes.data for a in inputs], dtype=np.int64)
                rows = np.ascontiguousarray(bases[None, :] + 4 * np.arange(batch)[:, None] * self._sizes[None, :])
                table_in = (rows, rows.ctypes.data)
            out, table_out = self._new_state(batch)
            logits = self._call(tokens, table_in[1], table_out[1])
            self._last_out, self._last_table = out, table_out
            return logits, out

    def step_donated(self, tokens: np.ndarray, state: list[Any]) -> tuple[np.ndarray, list[Any]]:
        """``run("step", ...)`` for a state its caller gave up: where it is the state this backend returned last
        (its own arrays), the new state is written over it; any other state runs the plain step."""
        with self._lock:
            if self._is_last_out(state):
                at = self._last_table[1]
                return self._call(tokens, at, at), state
        return self.run("step", tokens, state)

    def _is_last_out(self, state: list[Any]) -> bool:
        last = self._last_out
        return len(state) == len(last) and all(map(operator.is_, state, last))

    def _new_state(self, batch: int) -> tuple[list[np.ndarray], tuple[np.ndarray, int]]:
        """A new state for ``batch`` rows, every tensor a view of one block (one block from the pool, one address
        to read), and the table of its rows' addresses with the table's own address: one of two tables kept per
        batch, the one the last call's state is not read through."""
        block, address = self._blocks.take(batch * self._layout.total)
        tables = self._layout.tables(batch)
        table = tables[1] if self._last_table is tables[0] else tables[0]
        np.add(self._layout.offsets(batch), address, out=table[0])
        return self._layout.views(block, batch), table

    def _call(self, tokens: np.ndarray, tab_in: int, tab_out: int) -> np.ndarray:
        """One C call per batch row, reading the state rows the table at ``tab_in`` points at and writing those of
        the table at ``tab_out``."""
        if tokens.shape == (1,):            # one sequence's step, the decode loop's call: no per-row arithmetic
            logits = np.empty((1, self.vocab_size), dtype=np.float32)
            self._ids[0] = tokens[0]
            status = self._run(self._model, self._ids_at, 1, tab_in, tab_out, _address(logits), self.vocab_size)
            if status:
                self._check(status)
            return logits
        per_row = tokens.shape[1] if tokens.ndim == 2 else 1
        n_logits = per_row * self.vocab_size
        logits = np.empty((*tokens.shape, self.vocab_size), dtype=np.float32)
        at, stride = _address(logits), 8 * len(self.numel)
        for b in range(tokens.shape[0]):
            self._ids[:per_row] = tokens[b]
            status = self._run(self._model, self._ids_at, per_row, tab_in + b * stride, tab_out + b * stride,
                               at + 4 * b * n_logits, n_logits)
            if status:
                self._check(status)
        return logits

    def describe(self) -> dict[str, Any]:
        return {"library": f"seqedge C++ runner ({self.library})", "backend": "XnnpackBackend", "device": "cpu",
                "threads": self.threads, "program": str(self.program)}

    def close(self) -> None:
        if self._model:
            self._lib.seqedge_close(self._model)
            self._model = None

    def __del__(self) -> None:
        if getattr(self, "_model", None):
            self.close()


def _address(array: np.ndarray) -> int:
    """The address of a writable C-contiguous ``array``'s first element (cheaper than ``array.ctypes.data``)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(array))


def _float32_rows(value: Any) -> np.ndarray:
    """A state tensor as a C-contiguous float32 numpy array (a copy only where it is not one already)."""
    if hasattr(value, "numpy"):                             # another runtime's torch tensor
        value = value.numpy()
    return np.ascontiguousarray(value, dtype=np.float32)
