"""The floor of one decode step on this machine: what the hardware allows, to read a measured p50 against.

:func:`measure_limits` measures the machine once: copy bandwidth by a STREAM-like copy (numpy ``copyto``, one slice
per usable core in threads at once, since one core alone does not saturate the memory bus, or in one thread where
that is faster; bytes read plus bytes written per second, best of a few passes) at working sets from cache-sized
to far beyond the caches, and peak
float32 FLOP/s by a numpy matmul (``2 n^3`` per product, best of a few). :func:`step_floor` turns a variant's
weight bytes, state bytes and FLOPs into the time a step cannot beat: every weight and the state read once and
the new state written once at that bandwidth, or the FLOPs at that peak, whichever is larger. A p50 many times the
floor is overhead (per-node dispatch, per-call conversions), not arithmetic or memory traffic.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from seqedge.evaluate.run_info import usable_cores
from seqedge.runtimes.threads import step_flops

__all__ = ["MachineLimits", "measure_limits", "step_floor", "step_flops"]

COPY_SIZES = tuple(1 << k for k in (20, 22, 24, 26, 28))   # 1 MiB .. 256 MiB working sets of the copy
MATMUL_N = 1024              # float32 [n, n] @ [n, n]: large enough for the BLAS to reach its peak
PASSES = 5


@dataclass(frozen=True)
class MachineLimits:
    """Measured copy bandwidth (bytes/s) per working-set size and float32 matmul throughput (FLOP/s).

    A step reads its weights from wherever they fit: a model of a few MiB streams from the caches, a large one
    from memory, so the floor uses the bandwidth measured at the smallest working set that holds the step's
    bytes (the largest one measured beyond that)."""

    bandwidth_by_bytes: dict[int, float]
    peak_flops: float
    method: str = (f"bandwidth: numpy copyto of float32 arrays of {COPY_SIZES[0] >> 20}..{COPY_SIZES[-1] >> 20} "
                   f"MiB (read + write bytes), best of {PASSES}; peak: numpy float32 matmul {MATMUL_N}x{MATMUL_N}, "
                   f"best of {PASSES}, numpy's BLAS threads")

    def __post_init__(self) -> None:
        if not self.bandwidth_by_bytes or not all(v > 0 for v in self.bandwidth_by_bytes.values()):
            raise ValueError(f"bandwidth_by_bytes must map sizes to bandwidths > 0, got {self.bandwidth_by_bytes!r}")
        if not self.peak_flops > 0:
            raise ValueError(f"peak_flops must be > 0, got {self.peak_flops!r}")

    def bandwidth(self, nbytes: int) -> float:
        """Copy bandwidth at the smallest measured working set of at least ``nbytes`` (else the largest)."""
        sizes = sorted(self.bandwidth_by_bytes)
        return self.bandwidth_by_bytes[next((s for s in sizes if s >= nbytes), sizes[-1])]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _best_seconds(fn, passes: int) -> float:
    fn()                                           # warm-up: page faults and BLAS start-up are not the limit
    best = float("inf")
    for _ in range(passes):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _copy_in_threads(dst: np.ndarray, src: np.ndarray, repeats: int, threads: int) -> None:
    """``repeats`` copies of ``src`` into ``dst``, the arrays cut into one slice per thread, all threads at once
    (numpy releases the GIL while it copies)."""
    bounds = np.linspace(0, len(src), threads + 1, dtype=np.int64)

    def work(a: int, b: int) -> None:
        for _ in range(repeats):
            np.copyto(dst[a:b], src[a:b])
    workers = [threading.Thread(target=work, args=(int(a), int(b))) for a, b in zip(bounds[:-1], bounds[1:])]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def measure_limits(copy_sizes: tuple[int, ...] = COPY_SIZES, matmul_n: int = MATMUL_N,
                   passes: int = PASSES, threads: int | None = None) -> MachineLimits:
    """Measure this machine's copy bandwidth per working set (the faster of one thread and ``threads`` copying at
    once; default: one per usable core) and peak float32 FLOP/s (seconds; see the module)."""
    threads = usable_cores() if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    bandwidth = {}
    for size in copy_sizes:
        src = np.ones(size // 8, np.float32)       # source + destination = the working set
        dst = np.empty_like(src)
        repeats = max(1, (64 << 20) // size)       # time at least ~64 MiB of traffic per pass
        # one thread as well: for a cache-sized set, starting threads costs more than they gain
        seconds = min(_best_seconds(lambda dst=dst, src=src, n=repeats, t=t: _copy_in_threads(dst, src, n, t), passes)
                      for t in sorted({1, threads}))
        bandwidth[int(size)] = 2 * src.nbytes * repeats / seconds
    a = np.random.default_rng(0).standard_normal((matmul_n, matmul_n)).astype(np.float32)
    out = np.empty_like(a)
    matmul_s = _best_seconds(lambda: np.matmul(a, a, out=out), passes)
    method = (f"bandwidth: numpy copyto of float32 arrays of {min(copy_sizes) >> 20}..{max(copy_sizes) >> 20} MiB "
              f"(read + write bytes), best of {passes} in one thread and in {threads} at once; peak: numpy float32 "
              f"matmul {matmul_n}x{matmul_n}, best of {passes}, numpy's BLAS threads")
    return MachineLimits(bandwidth_by_bytes=bandwidth, peak_flops=2 * matmul_n ** 3 / matmul_s, method=method)


def step_floor(weight_bytes: int, state_bytes: int, flops: int, limits: MachineLimits) -> dict[str, Any]:
    """The floor of a step: (weights + state read + new state written) / bandwidth vs FLOPs / peak, the larger."""
    if weight_bytes < 0 or state_bytes < 0 or flops < 0:
        raise ValueError(f"weight_bytes, state_bytes and flops must be >= 0, got {weight_bytes}, {state_bytes}, "
                         f"{flops}")
    moved = weight_bytes + 2 * state_bytes
    bandwidth = limits.bandwidth(moved)
    memory_ms = 1e3 * moved / bandwidth
    compute_ms = 1e3 * flops / limits.peak_flops
    return {"floor_ms": max(memory_ms, compute_ms), "memory_ms": memory_ms, "compute_ms": compute_ms,
            "bound": "memory" if memory_ms >= compute_ms else "compute", "bandwidth_bytes_per_s": bandwidth,
            "weight_bytes": int(weight_bytes),
            "state_bytes": int(state_bytes), "flops": int(flops)}
