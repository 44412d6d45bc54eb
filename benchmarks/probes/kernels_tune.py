"""Sweep of the chunk-scan kernels' launch parameters on one card (what FWD_CONFIGS / BWD_CONFIGS should hold).

    python benchmarks/probes/kernels_tune.py --out DIR     -> DIR/kernels_tune.json, printed table

B=1, H=16, head dim 128, bf16, T=65,536 (the target shape). Each variant's output is compared with the
first variant's (relative L2), so a miscompiled variant shows up as an error, not as a fast time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import torch

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))   # config_timing.py lives in benchmarks/
from config_timing import scan_inputs  # noqa: E402


def write_markdown(json_path: str) -> None:
    """kernels_tune.md beside ``json_path``: every variant, fastest first per kind."""
    data = json.load(open(json_path))
    lines = [f"# Launch-parameter sweep of the chunk-scan kernels ({data['card']})", "",
             f"B={data['B']}, T={data['T']}, H={data['H']}, head dim {data['D']}, bf16. Median ms (triton do_bench); "
             "`rel_err_vs_first` compares each variant's outputs with the first variant's (bf16 rounding differs "
             "with the chunking). Written by `python benchmarks/probes/kernels_tune.py --report` from kernels_tune.json.", ""]
    for kind in ("fwd", "bwd"):
        rows = sorted((r for r in data["rows"] if r["kind"] == kind), key=lambda r: r.get("ms", float("inf")))
        lines += [f"## {kind}", "", "| config | programs/SM | ms | rel err vs first | error |", "|---|---|---|---|---|"]
        for r in rows:
            ms = f"{r['ms']:.2f}" if "ms" in r else "-"
            err = f"{r['rel_err_vs_first']:.1e}" if "rel_err_vs_first" in r else "-"
            lines.append(f"| `{r['config']}` | {r.get('programs_per_sm', '-')} | {ms} | {err} | {r.get('error', '')} |")
        lines.append("")
    for r in data["rows"]:
        if r["kind"] == "bwd_profile":
            lines += [f"## Where the backward's time goes ({r['config']})", "", "```", r["table"], "```"]
    with open(os.path.join(os.path.dirname(json_path) or ".", "kernels_tune.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--T", type=int, default=65536)
    ap.add_argument("--skip-fwd", action="store_true")
    ap.add_argument("--report", help="write kernels_tune.md next to this kernels_tune.json and exit")
    args = ap.parse_args(argv)
    if args.report:
        write_markdown(args.report)
        return 0
    if not args.out:
        ap.error("--out is required (or --report JSON)")
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    from triton.testing import do_bench

    from seqedge.kernels import chunk_scan_bwd_triton as bwd
    from seqedge.kernels import chunk_scan_triton as fwd

    B, T, H, D = 1, args.T, 16, 128
    gen, (q, k, v, g, beta) = scan_inputs(B, T, H, D, seed=0)
    do = torch.randn(B, T, H, D, generator=gen, device="cuda", dtype=torch.bfloat16)
    dfin = torch.randn(B, H, D, D, generator=gen, device="cuda")
    rows = []
    os.makedirs(args.out, exist_ok=True)

    def save():
        with open(os.path.join(args.out, "kernels_tune.json"), "w") as fh:
            json.dump(dict(card=torch.cuda.get_device_name(), B=B, T=T, H=H, D=D, rows=rows), fh, indent=1)

    def rel(a, b):
        return float((a.double() - b.double()).norm() / b.double().norm())

    first: dict[str, tuple] = {}       # kind -> the first variant's outputs, which every later one is compared with
    configs: dict[str, object] = {}

    def measure(row: dict, run, warmup: int, rep: int) -> None:
        """Run once, compare with the first variant of the kind, time it; a failure is recorded, not raised."""
        try:
            out = run()
            ref = first.setdefault(row["kind"], out)
            row["rel_err_vs_first"] = max(rel(a, b) for a, b in zip(out, ref))
            row["ms"] = do_bench(run, warmup=warmup, rep=rep, return_mode="median")
        except Exception as err:
            row["error"] = f"{type(err).__name__}: {str(err)[:120]}"
        rows.append(row)
        print(row, flush=True)
        save()

    if not args.skip_fwd:
        # chunk 64 is left out: it hits an illegal address on Hopper (EXCLUDED_CONFIGS), and a crash ends a CUDA context
        for chunk, bv, warps, stages, pps in itertools.product((32,), (32, 64, 128), (4, 8), (2, 3), (8, 16)):
            cfg = fwd.ScanConfig(chunk=chunk, block_v=bv, num_warps=warps, num_stages=stages)
            fwd.PROGRAMS_PER_SM = pps
            measure(dict(kind="fwd", config=repr(cfg), programs_per_sm=pps),
                    lambda: fwd.chunk_scan_fwd(q, k, v, g, beta, None, D ** -0.5, cfg), warmup=3, rep=20)
        fwd.PROGRAMS_PER_SM = 2
    variants = [(32, w, bk, bv, gk) for w, (bk, bv), gk in itertools.product((4, 8), ((32, 64), (16, 32)), (64, 32))]
    variants += [(64, 4, 32, 64, 32), (64, 4, 16, 32, 32)]
    for chunk, warps, bk, bv, gk in variants:
        cfg = bwd.BwdConfig(chunk=chunk, num_warps=warps, block_k=bk, block_v=bv, grad_block_k=gk, grad_block_v=gk)
        configs[repr(cfg)] = cfg
        measure(dict(kind="bwd", config=repr(cfg)),
                lambda: bwd.chunk_scan_bwd(q, k, v, g, beta, None, do, dfin, D ** -0.5, cfg), warmup=2, rep=10)
    best = min((r for r in rows if r["kind"] == "bwd" and "ms" in r), key=lambda r: r["ms"], default=None)
    if best is not None:                                 # where the backward's time goes, kernel by kernel
        cfg = configs[best["config"]]
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                bwd.chunk_scan_bwd(q, k, v, g, beta, None, do, dfin, D ** -0.5, cfg)
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=12)
        print(table, flush=True)
        rows.append(dict(kind="bwd_profile", config=best["config"], table=table))
        save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
