"""Shared by the kernel benchmarks: the random scan inputs they time; one config's outputs against the first
config's, its peak memory and its time (kernels_fwd_configs.py, kernels_bwd_configs.py); one call's CUDA-event time
(kernels.py, fwd_call_overhead.py); the kernels a call launches, from torch.profiler (fwd_call_overhead.py,
decode_kernel_profile.py); and the metadata every recorded run carries."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from seqedge.evaluate.run_info import run_metadata


def scan_inputs(B: int, T: int, H: int, D: int, seed: int,
                device: str = "cuda") -> tuple[torch.Generator, tuple[torch.Tensor, ...]]:
    """``(gen, (q, k, v, g, beta))``: q, k, v ~ N(0, 1) and log forget gates g ~ U(-5, 0), bf16 ``[B, T, H, D]``;
    beta ~ U(0, 1) float32 ``[B, T, H]``. ``gen`` (seeded with ``seed``, drawn in that order) is returned for
    callers that draw more inputs from it."""
    gen = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, D, generator=gen, device=device, dtype=torch.bfloat16) for _ in range(3))
    g = (-5.0 * torch.rand(B, T, H, D, generator=gen, device=device)).to(torch.bfloat16)
    beta = torch.rand(B, T, H, generator=gen, device=device)
    return gen, (q, k, v, g, beta)


def time_config(run: Callable[[], Sequence[torch.Tensor]], ref: list[torch.Tensor] | None, warmup: int, rep: int,
                compared: slice = slice(None)) -> tuple[dict, list[torch.Tensor]]:
    """``(row, ref)``: ``rel_err_vs_first`` (the largest relative L2 error of ``run()``'s ``compared`` outputs
    against ``ref``, which is these outputs when ``ref`` is None), ``peak_extra_gb`` (peak memory of one call above
    what was allocated before it) and ``ms`` (median of triton's do_bench)."""
    from triton.testing import do_bench

    got = [x.float() for x in run()[compared]]
    ref = got if ref is None else ref
    row = dict(rel_err_vs_first=max(float((a - b).norm() / b.norm().clamp_min(1e-30)) for a, b in zip(got, ref)))
    del got
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    row["peak_extra_gb"] = (torch.cuda.max_memory_allocated() - base) / 1e9
    row["ms"] = do_bench(run, warmup=warmup, rep=rep, return_mode="median")
    return row, ref


def event_ms(fn: Callable[[], object]) -> float:
    """CUDA-event time of one call of ``fn`` (ms), from the moment the host starts it: whatever the host does before
    the first launch counts when the GPU is idle."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def replay_us(fn: Callable[[], object], reps: int, warmup: int = 20) -> float:
    """Mean time of ``fn`` (a CUDA graph's replay, say) in us, over ``reps`` calls back to back after ``warmup``."""
    for _ in range(warmup):
        fn()
    return event_ms(lambda: [fn() for _ in range(reps)]) / reps * 1e3


def cuda_kernels(fn: Callable[[], object]) -> list[dict]:
    """The CUDA kernels that ``fn()`` launches, in launch order: ``name``, ``us`` (device time) and ``start_us``
    (from the first kernel's start), from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = sorted((dict(name=e.name, us=e.device_time, start_us=e.time_range.start) for e in prof.events()
                   if e.device_type.name == "CUDA"), key=lambda r: r["start_us"])
    t0 = rows[0]["start_us"] if rows else 0
    for r in rows:
        r["start_us"] -= t0
    return rows


def run_meta(shapes: str) -> dict:
    """Card, versions, commit, date, command and machine of this run (``seqedge.evaluate.run_info``), with
    ``versions`` (torch, triton) at the top level where the Markdown writers read them."""
    meta = run_metadata(card=True, shapes=shapes)
    libraries = meta["machine"]["libraries"]
    meta["versions"] = {name: libraries.get(name, "not installed") for name in ("torch", "triton")}
    return meta
