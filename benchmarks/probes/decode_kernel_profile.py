"""Device time of each kernel of one fused decode step, per FUSED_CONFIGS entry (small preset, bf16).

The graph's per-token time (kernels.py) does not say which launch is slow: with programmatic dependent launch the
kernels overlap. Here each step runs without the graph and without PDL (``capture=False, pdl=False``), so every
kernel's own time shows in torch.profiler; the sum is an upper bound of the work on the chain, not a graph time.

    python benchmarks/probes/decode_kernel_profile.py --out benchmarks/results [--batch 1]
"""

from __future__ import annotations

import argparse
import collections
import json
import os

import torch

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))   # config_timing.py lives in benchmarks/
from config_timing import cuda_kernels, run_meta  # noqa: E402


def profile_step(dec, tokens: torch.Tensor, steps: int = 5) -> dict[str, dict]:
    """Kernel name -> launches per step and device us per step, averaged over ``steps`` profiled steps."""
    for _ in range(3):
        dec.step(tokens)
    torch.cuda.synchronize()
    per = collections.defaultdict(lambda: dict(launches=0, us=0.0))
    for r in cuda_kernels(lambda: [dec.step(tokens) for _ in range(steps)]):
        per[r["name"]]["launches"] += 1
        per[r["name"]]["us"] += r["us"]
    return {name: dict(launches=r["launches"] / steps, us=r["us"] / steps) for name, r in per.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for decode_kernel_profile.json / .md")
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args(argv)

    from seqedge.config import SequentialAttentionConfig
    from seqedge.kernels.decode_fused import FUSED_CONFIGS, FusedDecoder
    from seqedge.model import SequentialAttentionModel

    torch.manual_seed(0)
    model = SequentialAttentionModel(SequentialAttentionConfig.preset("small")).to("cuda", torch.bfloat16).eval()
    tokens = torch.randint(0, model.config.vocab_size, (args.batch,), device="cuda")
    rows = []
    with torch.no_grad():
        for cfg in FUSED_CONFIGS:
            dec = FusedDecoder(model, args.batch, config=cfg, capture=False, pdl=False)
            kernels = profile_step(dec, tokens)
            rows.append(dict(config=cfg._asdict(), kernels=kernels, total_us=sum(r["us"] for r in kernels.values())))
            print(json.dumps(rows[-1]), flush=True)
    result = dict(meta=run_meta(f"small preset, batch {args.batch}, bf16, no graph, no PDL"), rows=rows)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "decode_kernel_profile.json"), "w") as f:
        json.dump(result, f, indent=1)
    lines = ["# Fused decode: device time per kernel of one step (no graph, no PDL)", "",
             *[f"- {k}: {v}" for k, v in result["meta"].items()], "",
             "| config | kernel | launches / step | us / step | us / launch |", "|---|---|---|---|---|"]
    for r in rows:
        for name, k in sorted(r["kernels"].items(), key=lambda kv: -kv[1]["us"]):
            lines.append(f"| `{r['config']}` | `{name[:40]}` | {k['launches']:.0f} | {k['us']:.1f} | "
                         f"{k['us'] / max(k['launches'], 1):.2f} |")
        lines.append(f"| `{r['config']}` | all | | {r['total_us']:.1f} | |")
    with open(os.path.join(args.out, "decode_kernel_profile.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
