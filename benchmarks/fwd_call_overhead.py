"""Where a forward call's time goes beyond its kernels: host time per layer of the call, and CUDA-event time of the
same call entered at each layer (public API, custom op, CUDA implementation, explicit config).

The kernel benchmark (kernels.py) times each call between two CUDA events with the GPU idle before it, so every
microsecond the host spends before the first launch counts; triton's do_bench (kernels_fwd_configs.py) queues an
L2 flush first, which hides part of it. This script separates the two: host time is measured while the GPU is kept
busy (launches never wait), event time with the GPU idle before each call (as kernels.py) and queued behind a
busy kernel (host time hidden: what the GPU itself needs).

    python benchmarks/fwd_call_overhead.py --out benchmarks/results [--T 65536]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from config_timing import cuda_kernels, event_ms, run_meta, scan_inputs

H, D = 16, 128


def host_us(fn, n: int = 50) -> float:
    """Median host time of one call (us) while a long sleep kernel keeps the GPU busy: launches never wait."""
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(times)


def median_event_ms(fn, n: int = 50, behind_busy: bool = False) -> float:
    """Median CUDA-event time of one call: GPU idle before it (as kernels.py), or queued behind a ~5 ms sleep
    kernel so the host's work before the first launch is hidden."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(n):
        if behind_busy:
            torch.cuda._sleep(10_000_000)
        times.append(event_ms(fn))
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for fwd_call_overhead.json / .md")
    ap.add_argument("--T", type=int, default=65536)
    ap.add_argument("--B", type=int, default=1)
    args = ap.parse_args(argv)

    from seqedge.kernels import chunk_scan, ops
    from seqedge.kernels import chunk_scan_triton as cst

    q, k, v, g, beta = scan_inputs(args.B, args.T, H, D, seed=0)[1]
    scale = D ** -0.5
    with torch.no_grad():
        chunk_scan(q, k, v, g, beta)                              # compiles, picks the config
        cfg = cst.pick_config(q, k, v, g, beta, None, scale)
        levels = {
            "seqedge.kernels.chunk_scan (public)": lambda: chunk_scan(q, k, v, g, beta),
            "ops.chunk_scan_gated (custom op)": lambda: ops.chunk_scan_gated(q, k, v, g, beta, None, scale),
            "ops.chunk_scan_gated_cuda (implementation)":
                lambda: ops.chunk_scan_gated_cuda(q, k, v, g, beta, None, scale),
            "chunk_scan_fwd (explicit config)": lambda: cst.chunk_scan_fwd(q, k, v, g, beta, None, scale, cfg),
            "prepass launch only": lambda: cst.prepass(q, k, g, beta, scale, cfg.chunk, cfg.prep_warps),
        }
        rows = []
        for name, fn in levels.items():
            row = dict(level=name, host_us=host_us(fn), event_ms_idle=median_event_ms(fn),
                       event_ms_behind_busy=median_event_ms(fn, behind_busy=True))
            rows.append(row)
            print(json.dumps(row), flush=True)
        public = levels["seqedge.kernels.chunk_scan (public)"]
        public()
        torch.cuda.synchronize()
        prof = [dict(r, name=r["name"][:60]) for r in cuda_kernels(public)]
    result = dict(meta=run_meta(f"B={args.B}, T={args.T}, H={H}, head dim {D}, bf16"), config=repr(cfg),
                  levels=rows, kernels=prof)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "fwd_call_overhead.json"), "w") as f:
        json.dump(result, f, indent=1)
    lines = ["# Forward call: host time and event time by entry point", "",
             *[f"- {k}: {v}" for k, v in result["meta"].items()], f"- config: `{result['config']}`", "",
             "| entry point | host us / call (GPU busy) | event ms, GPU idle before | event ms, behind a busy kernel |",
             "|---|---|---|---|"]
    lines += [f"| {r['level']} | {r['host_us']:.1f} | {r['event_ms_idle']:.3f} | {r['event_ms_behind_busy']:.3f} |"
              for r in rows]
    lines += ["", "Kernels of one public call (torch.profiler, device time):", "", "| kernel | start us | us |",
              "|---|---|---|"]
    lines += [f"| `{r['name']}` | {r['start_us']:.1f} | {r['us']:.1f} |" for r in prof]
    with open(os.path.join(args.out, "fwd_call_overhead.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
