"""Batch-1 decode: the one-launch cluster decoder (kernels/cluster_decode.cu) against the 36-launch FusedDecoder.

For the ``small`` and ``base`` presets (bf16, random weights) and every cluster size and ring depth the model takes:
us per token over CUDA-graph replays, the bandwidth floor (weights + 2x state bytes over the card's measured copy
bandwidth, as in kernels.py) and the first token's logits error against ``model.step``.

    python benchmarks/decode_cluster.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from config_timing import run_meta
from kernels import _time_decoder, copy_bandwidth_gbs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for decode_cluster.json / .md")
    ap.add_argument("--presets", default="small,base")
    ap.add_argument("--tag", default="", help="suffix of the output files' names")
    args = ap.parse_args(argv)

    from seqedge.config import SequentialAttentionConfig
    from seqedge.kernels.decode_cluster import ClusterDecoder, cluster_sizes
    from seqedge.kernels.decode_fused import FusedDecoder
    from seqedge.model import SequentialAttentionModel

    bw = copy_bandwidth_gbs()
    rows = []
    for preset in args.presets.split(","):
        torch.manual_seed(0)
        model = SequentialAttentionModel(SequentialAttentionConfig.preset(preset)).to("cuda", torch.bfloat16).eval()
        w_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        candidates = [("fused (36-launch chain, PDL)" if preset == "small" else "fused", lambda: FusedDecoder(model, 1))]
        for nc in cluster_sizes(model.config):
            for slots in (3, 2, 4):
                candidates.append((f"cluster {nc} CTAs, {slots} ring slots",
                                   lambda nc=nc, slots=slots: ClusterDecoder(model, cluster=nc, slots=slots)))
        for name, make in candidates:
            row = dict(preset=preset, B=1, decoder=name)
            try:
                dec = make()
                row.update(_time_decoder(dec, model, 1, w_bytes, bw, n=500))
                if hasattr(dec, "layout"):
                    row.update(slot_bytes=dec.layout["slot"], smem_bytes=dec.layout["smem_bytes"])
            except Exception as err:                      # one failing variant must not end the run
                row["note"] = f"error: {type(err).__name__}: {str(err)[:200]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = run_meta("batch 1, bf16 weights, float32 state; us per token = mean of 500 CUDA-graph replays")
    meta["copy_bw_gbs"] = bw
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "decode_cluster" + args.tag)
    with open(stem + ".json", "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    lines = ["# Batch-1 decode: one cluster launch per token vs the 36-launch fused chain", "",
             *[f"- {k}: {v}" for k, v in meta.items()], "",
             "| preset | decoder | us / token | floor us | x floor | 1st-token logits rel. err vs model.step |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "us_per_token" in r:
            lines.append(f"| {r['preset']} | {r['decoder']} | {r['us_per_token']:.1f} | {r['floor_us']:.1f} | "
                         f"{r['x_floor']:.2f} | {r['rel_err_vs_model_step']:.1e} |")
        else:
            lines.append(f"| {r['preset']} | {r['decoder']} | - | - | - | {r.get('note', '')} |")
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
