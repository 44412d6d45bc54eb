"""The floor of one decode step on this machine: what the hardware allows, to read a measured p50 against.

:func:`measure_limits` measures the machine once: memory bandwidth by a STREAM-like copy (numpy ``copyto`` of an
array far larger than the caches; bytes read plus bytes written per second, best of a few passes) and peak
float32 FLOP/s by a numpy matmul (``2 n^3`` per product, best of a few). :func:`step_floor` turns a variant's
weight bytes, state bytes and FLOPs into the time a step cannot beat: every weight and the state read once and
the new state written once at that bandwidth, or the FLOPs at that peak, whichever is larger. A p50 many times the
floor is overhead (per-node dispatch, per-call conversions), not arithmetic or memory traffic.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from seqedge.runtimes.threads import step_flops

__all__ = ["MachineLimits", "measure_limits", "step_floor", "step_flops"]

COPY_BYTES = 256 << 20       # per array: far beyond any last-level cache here
MATMUL_N = 1024              # float32 [n, n] @ [n, n]: large enough for the BLAS to reach its peak
PASSES = 5


@dataclass(frozen=True)
class MachineLimits:
    """Measured memory bandwidth (bytes/s) and float32 matmul throughput (FLOP/s) of this machine."""

    bandwidth_bytes_per_s: float
    peak_flops: float
    method: str = (f"bandwidth: numpy copyto of {COPY_BYTES >> 20} MiB float32 (read + write bytes), best of "
                   f"{PASSES}; peak: numpy float32 matmul {MATMUL_N}x{MATMUL_N}, best of {PASSES}, numpy's BLAS "
                   "threads")

    def __post_init__(self) -> None:
        for name in ("bandwidth_bytes_per_s", "peak_flops"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")

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


def measure_limits(copy_bytes: int = COPY_BYTES, matmul_n: int = MATMUL_N, passes: int = PASSES) -> MachineLimits:
    """Measure this machine's memory bandwidth and peak float32 FLOP/s (a few seconds; see the module doc)."""
    src = np.ones(copy_bytes // 4, np.float32)
    dst = np.empty_like(src)
    copy_s = _best_seconds(lambda: np.copyto(dst, src), passes)
    a = np.random.default_rng(0).standard_normal((matmul_n, matmul_n)).astype(np.float32)
    out = np.empty_like(a)
    matmul_s = _best_seconds(lambda: np.matmul(a, a, out=out), passes)
    return MachineLimits(bandwidth_bytes_per_s=2 * src.nbytes / copy_s, peak_flops=2 * matmul_n ** 3 / matmul_s)


def step_floor(weight_bytes: int, state_bytes: int, flops: int, limits: MachineLimits) -> dict[str, Any]:
    """The floor of a step: (weights + state read + new state written) / bandwidth vs FLOPs / peak, the larger."""
    if weight_bytes < 0 or state_bytes < 0 or flops < 0:
        raise ValueError(f"weight_bytes, state_bytes and flops must be >= 0, got {weight_bytes}, {state_bytes}, "
                         f"{flops}")
    memory_ms = 1e3 * (weight_bytes + 2 * state_bytes) / limits.bandwidth_bytes_per_s
    compute_ms = 1e3 * flops / limits.peak_flops
    return {"floor_ms": max(memory_ms, compute_ms), "memory_ms": memory_ms, "compute_ms": compute_ms,
            "bound": "memory" if memory_ms >= compute_ms else "compute", "weight_bytes": int(weight_bytes),
            "state_bytes": int(state_bytes), "flops": int(flops)}
