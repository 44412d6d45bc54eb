"""Every forward chunk-scan config (FWD_CONFIGS + PENDING_CONFIGS) timed on one CUDA card, side by side.

B=1, H=16, head dim 128, bf16 (the target shapes); median ms of triton's do_bench and the forward's peak memory
above the inputs, per config and length. The picker (``pick_config``) takes the fastest FWD_CONFIGS entry per
shape class at run time; this shows the margins, and whether a pending config earns its place.

    python benchmarks/kernels_fwd_configs.py --out benchmarks/results [--lens 65536,131072]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from config_timing import run_meta, scan_inputs, time_config

B, H, D = 1, 16, 128


def bench_length(T: int, fwd) -> list[dict]:
    """Every config of the forward module ``fwd`` (seqedge.kernels.chunk_scan_triton) at length T."""
    configs, pending = fwd.FWD_CONFIGS + fwd.PENDING_CONFIGS, fwd.PENDING_CONFIGS
    q, k, v, g, beta = scan_inputs(B, T, H, D, seed=T)[1]
    ref, rows = None, []
    for cfg in configs:
        row = dict(T=T, config=repr(cfg), pending=cfg in pending)
        try:
            run = lambda: fwd.chunk_scan_fwd(q, k, v, g, beta, None, D ** -0.5, cfg)  # noqa: B023 (used at once)
            timing, ref = time_config(run, ref, warmup=5, rep=50, compared=slice(0, 1))     # o, not the state
            row.update(timing)
        except Exception as err:                 # one failing config must not hide the others
            row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
        rows.append(row)
        print(row, flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--lens", default="65536,131072")
    ap.add_argument("--programs-per-sm", default="8",
                    help="comma list: values of chunk_scan_triton.PROGRAMS_PER_SM to run every config with")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernels_fwd_configs.py needs a CUDA GPU; none is visible", file=sys.stderr)
        return 2
    from seqedge.kernels import chunk_scan_triton as fwd

    rows = []
    for pps in (int(x) for x in args.programs_per_sm.split(",")):
        fwd.PROGRAMS_PER_SM = pps
        for T in (int(x) for x in args.lens.split(",")):
            for row in bench_length(T, fwd):
                rows.append(dict(row, programs_per_sm=pps))
            torch.cuda.empty_cache()
    meta = run_meta(f"B={B}, H={H}, head dim {D}, bf16")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "kernels_fwd_configs.json"), "w") as fh:
        json.dump(dict(meta=meta, rows=rows), fh, indent=1)
    lines = ["# Forward chunk-scan configs side by side\n", f"- card: {meta['card']}", f"- date (UTC): {meta['date']}",
             f"- versions: {meta['versions']}", f"- command: `{meta['command']}`", f"- shapes: {meta['shapes']}\n",
             "| T | config | programs/SM | pending | fwd ms (median) | peak extra GB | rel. err vs first | error |",
             "|---|---|---|---|---|---|---|---|"]
    fmt = lambda r, key, spec: format(r[key], spec) if key in r else "-"
    lines += [f"| {r['T']} | `{r['config']}` | {r['programs_per_sm']} | {'yes' if r['pending'] else 'no'} | "
              f"{fmt(r, 'ms', '.3f')} | "
              f"{fmt(r, 'peak_extra_gb', '.2f')} | {fmt(r, 'rel_err_vs_first', '.1e')} | {r.get('error', '')} |"
              for r in rows]
    with open(os.path.join(args.out, "kernels_fwd_configs.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
