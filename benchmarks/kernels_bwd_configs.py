"""Every backward chunk-scan config (BWD_CONFIGS) timed on one CUDA card, with where the fastest one's time goes.

B=1, H=16, head dim 128, bf16 (the target shapes), T=65,536 by default; median ms of triton's do_bench for the
backward alone, its peak memory above the inputs, each config's gradients against the first config's, a
kernel-by-kernel profile of the fastest, and forward+backward through the autograd op (``seqedge.kernels
.chunk_scan``, configs picked as in training) timed the same way. The picker (``pick_bwd_config``) takes the
fastest entry per shape class at run time; this shows the margins.

    python benchmarks/kernels_bwd_configs.py --out benchmarks/results [--lens 65536] [--extra]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from config_timing import run_meta, scan_inputs, time_config

B, H, D = 1, 16, 128


def extra_configs(bwd) -> list:
    """Variants outside BWD_CONFIGS worth a look (``--extra``): timed and compared, never picked."""
    cfg = bwd.BwdConfig
    return [cfg(chunk=32, num_warps=4, block_k=64, block_v=64, grad_block_k=128),
            cfg(chunk=32, num_warps=8, block_k=64, block_v=64, grad_block_k=128),
            cfg(chunk=32, num_warps=4, block_k=128, block_v=64),
            cfg(chunk=32, num_warps=4, block_k=64, block_v=128),
            cfg(chunk=32, num_warps=4, block_k=64, block_v=64, grad_block_v=128)]


def bench_length(T: int, configs: list, bwd) -> list[dict]:
    """Each config of ``configs`` at length T: time, peak memory, max relative gradient error vs the first."""
    gen, (q, k, v, g, beta) = scan_inputs(B, T, H, D, seed=T)
    do = torch.randn(B, T, H, D, device="cuda", generator=gen, dtype=torch.bfloat16)
    dfin = torch.randn(B, H, D, D, device="cuda", generator=gen)
    ref, rows = None, []
    for cfg in configs:
        row = dict(T=T, config=repr(cfg), listed=cfg in bwd.BWD_CONFIGS)
        try:
            run = lambda: bwd.chunk_scan_bwd(q, k, v, g, beta, None, do, dfin, D ** -0.5, cfg)  # noqa: B023
            timing, ref = time_config(run, ref, warmup=3, rep=30)
            row.update(timing)
        except Exception as err:                 # one failing config must not hide the others
            row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
        rows.append(row)
        print(row, flush=True)
    best = min((r for r in rows if "ms" in r), key=lambda r: r["ms"], default=None)
    if best is not None:                         # where the fastest backward's time goes, kernel by kernel
        cfg = next(c for c in configs if repr(c) == best["config"])
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                bwd.chunk_scan_bwd(q, k, v, g, beta, None, do, dfin, D ** -0.5, cfg)
            torch.cuda.synchronize()
        rows.append(dict(T=T, kind="profile", config=best["config"],
                         table=prof.key_averages().table(sort_by="cuda_time_total", row_limit=10)))
        print(rows[-1]["table"], flush=True)
    rows.append(dict(T=T, kind="fwd+bwd", ms=_fwd_bwd_ms(q, k, v, g, beta, do)))
    print(rows[-1], flush=True)
    return rows


def _fwd_bwd_ms(q, k, v, g, beta, do) -> float:
    """Forward and backward of ``sum(o * do)`` through the autograd op, every input a leaf (as in training)."""
    from triton.testing import do_bench

    from seqedge.kernels import chunk_scan

    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v, g, beta)]

    def step():
        for x in leaves:
            x.grad = None
        o, _ = chunk_scan(*leaves)
        o.backward(do)
    return do_bench(step, warmup=3, rep=30, return_mode="median")


def write_markdown(meta: dict, rows: list[dict], path: str) -> None:
    lines = ["# Backward chunk-scan configs side by side\n", f"- card: {meta['card']}", f"- date (UTC): {meta['date']}",
             f"- versions: {meta['versions']}", f"- command: `{meta['command']}`", f"- shapes: {meta['shapes']}",
             "- times: median of triton do_bench (kernel time; host dispatch overlaps)\n",
             "| T | config | in BWD_CONFIGS | bwd ms (median) | peak extra GB | max rel. err vs first | error |",
             "|---|---|---|---|---|---|---|"]
    fmt = lambda r, key, spec: format(r[key], spec) if key in r else "-"
    for r in rows:
        if "kind" not in r:
            lines.append(f"| {r['T']} | `{r['config']}` | {'yes' if r['listed'] else 'no'} | {fmt(r, 'ms', '.3f')} | "
                         f"{fmt(r, 'peak_extra_gb', '.2f')} | {fmt(r, 'rel_err_vs_first', '.1e')} | "
                         f"{r.get('error', '')} |")
    for r in rows:
        if r.get("kind") == "fwd+bwd":
            lines.append(f"\nT={r['T']}: forward+backward through `seqedge.kernels.chunk_scan` (picked configs): "
                         f"**{r['ms']:.2f} ms** (median, do_bench)")
    for r in rows:
        if r.get("kind") == "profile":
            lines += [f"\n## Where the time goes, T={r['T']}: `{r['config']}`\n", "```", r["table"], "```"]
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--lens", default="65536")
    ap.add_argument("--extra", action="store_true", help="also time the variants of extra_configs() (not picked)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernels_bwd_configs.py needs a CUDA GPU; none is visible", file=sys.stderr)
        return 2
    from seqedge.kernels import chunk_scan_bwd_triton as bwd

    configs = list(bwd.BWD_CONFIGS) + (extra_configs(bwd) if args.extra else [])
    rows = []
    for T in (int(x) for x in args.lens.split(",")):
        rows += bench_length(T, configs, bwd)
        torch.cuda.empty_cache()
    meta = run_meta(f"B={B}, H={H}, head dim {D}, bf16")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "kernels_bwd_configs.json"), "w") as fh:
        json.dump(dict(meta=meta, rows=rows), fh, indent=1)
    write_markdown(meta, rows, os.path.join(args.out, "kernels_bwd_configs.md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
