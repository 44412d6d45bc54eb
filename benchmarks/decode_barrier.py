"""Where the persistent decode kernel's time goes: its grid barrier alone, and the step with and without barriers.

Rows:
- ``barrier``: us per grid barrier, from ``decode_persistent.barrier_rounds_kernel`` (2 x rounds barriers in one
  launch of one program per SM), for each barrier implementation and warps per program.
- ``step``: us per token of the `small` preset at batch 1 (bf16, CUDA graph), for every PERSISTENT_CONFIGS entry
  and the default 5-launch config; for the persistent configs also the same launch without its barriers
  (``SYNC=False``: the programs race, so its logits are wrong; it only times the work), so the difference is what
  the 35 barriers cost in place.

    python benchmarks/decode_barrier.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from config_timing import run_meta


def graph_us(fn, n: int = 200) -> float:
    """Mean us of ``fn`` replayed ``n`` times from one CUDA graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / n * 1e3


def barrier_rows(rounds: int = 500) -> list[dict]:
    import triton

    from seqedge.kernels.decode_persistent import COUNTER, FLAGS, barrier_rounds_kernel

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for name, code in (("counter", COUNTER), ("flags", FLAGS)):
        for warps in (4, 8):
            buf = torch.zeros(sms, dtype=torch.int32, device="cuda")
            errors = torch.zeros(sms, dtype=torch.int32, device="cuda")
            sync = torch.zeros(sms, dtype=torch.int32, device="cuda")
            launch = lambda: barrier_rounds_kernel[(sms,)](buf, errors, sync, ROUNDS=rounds, BARRIER=code,
                                                           FP=triton.next_power_of_2(sms), num_warps=warps,
                                                           launch_cooperative_grid=True)
            launch()
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(5):
                launch()
            end.record()
            end.synchronize()
            us = start.elapsed_time(end) / 5 * 1e3 / (2 * rounds)
            rows.append(dict(kind="barrier", barrier=name, num_warps=warps, programs=sms, us_per_barrier=us,
                             errors=int(errors.sum())))
            print(rows[-1], flush=True)
    return rows


def step_rows() -> list[dict]:
    from seqedge.config import SequentialAttentionConfig
    from seqedge.kernels.decode_fused import FUSED_CONFIGS, PERSISTENT_CONFIGS, FusedDecoder
    from seqedge.model import SequentialAttentionModel

    torch.manual_seed(0)
    model = SequentialAttentionModel(SequentialAttentionConfig.preset("small")).to("cuda", torch.bfloat16).eval()
    rows = []
    for cfg in (FUSED_CONFIGS[0],) + PERSISTENT_CONFIGS:
        dec = FusedDecoder(model, batch_size=1, config=cfg, capture=False)
        row = dict(kind="step", config=cfg._asdict(), launches=dec.launches_per_step, us_per_token=graph_us(dec._body))
        if dec.persistent:
            row["us_per_token_no_barriers"] = graph_us(lambda: dec._persistent_body(sync=False))
        rows.append(row)
        print(row, flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for decode_barrier.json / .md")
    args = ap.parse_args(argv)
    meta = run_meta("small preset, batch 1, bf16 weights; barrier rows: one program per SM")
    rows = barrier_rows() + step_rows()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "decode_barrier.json"), "w") as f:
        json.dump(dict(meta, rows=rows), f, indent=1)
    lines = ["# Persistent decode: the grid barrier and the step", "",
             f"- card: {meta['card']}", f"- versions: {meta['versions']}", f"- date: {meta['date']}",
             f"- command: `{meta['command']}`", "", "| barrier | warps | programs | us per barrier | errors |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['barrier']} | {r['num_warps']} | {r['programs']} | {r['us_per_barrier']:.2f} | {r['errors']} |"
              for r in rows if r["kind"] == "barrier"]
    lines += ["", "| config | launches / token | us / token | us / token without barriers (wrong results) |",
              "|---|---|---|---|"]
    lines += [f"| `{r['config']}` | {r['launches']} | {r['us_per_token']:.1f} | "
              f"{r['us_per_token_no_barriers']:.1f} |" if "us_per_token_no_barriers" in r else
              f"| `{r['config']}` | {r['launches']} | {r['us_per_token']:.1f} | - |" for r in rows if r["kind"] == "step"]
    with open(os.path.join(args.out, "decode_barrier.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
