"""The delta prep with its scores and inverse in registers (``DeltaConfig.register_prep``) against the prep through
the float32 scratch, on one card: outputs compared, each prep alone and the whole forward timed.

    python benchmarks/probes/delta_prep_regs_probe.py --out DIR [--chunks 64] [--gates per_key] [--variant FILE]

B=1, H=16, dk=dv=128, bf16, T=65,536 (the benchmark's shape), both gate kinds, chunks of 32 and 64 (``ROWS``:
chunk, key block and warps of the register prep; the scratch prep it is compared with is the ``DELTA_CONFIGS``
entry of that chunk and gate kind, ``BASE``). ``--variant`` times another revision's register prep module beside
each row. Writes ``delta_prep_regs_probe.json`` after every measurement.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os

import torch

B, H, D, T = 1, 16, 128, 65536
# chunk 64 ordered by the offline spill counts (delta_prep_registers.md), least first: a time box keeps the likeliest
ROWS = [(32, 32, 1), (32, 32, 2), (32, 64, 2)] + [(64, bk, w) for w in (4, 2, 1) for bk in (16, 32, 64)]
# (chunk, per_head) -> the scratch-prep config of DELTA_CONFIGS the register prep is set beside
BASE = {(32, False): dict(chunk=32, block_v=64, num_stages=3), (32, True): dict(chunk=32, block_v=64, num_stages=3),
        (64, False): dict(chunk=64, block_v=16, num_stages=3),
        (64, True): dict(chunk=64, block_v=64, num_stages=3, prep_block_k=64)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--chunks", type=int, nargs="+", default=[32, 64], help="only the rows of these chunk sizes")
    ap.add_argument("--gates", choices=["per_key", "per_head"], nargs="+", default=["per_key", "per_head"])
    ap.add_argument("--variant", help="a register prep module of another revision (`git show "
                    "REV:kernels/delta_prep_regs_triton.py > FILE`): its prep timed and compared beside each row")
    args = ap.parse_args()
    from triton.testing import do_bench

    from seqedge.kernels.delta_scan_triton import DeltaConfig, delta_scan_fwd, dot_precision, prep

    variant = None
    if args.variant:
        # loaded inside seqedge.kernels so that its relative imports find the helpers it shares
        spec = importlib.util.spec_from_file_location("seqedge.kernels._probe_variant", args.variant)
        variant = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(variant)

    res = {"meta": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                    "device": torch.cuda.get_device_name(), "torch": torch.__version__}, "rows": {}}
    path = os.path.join(args.out, "delta_prep_regs_probe.json")
    inputs = {}
    for per_head in [g == "per_head" for g in args.gates]:
        gen = torch.Generator(device="cuda").manual_seed(0)
        r = lambda *s: torch.randn(*s, generator=gen, device="cuda")
        q = r(B, T, H, D).bfloat16()
        k = torch.nn.functional.normalize(r(B, T, H, D), dim=-1).bfloat16()
        v = r(B, T, H, D).bfloat16()
        g = -0.5 * torch.rand(B, T, H, 1 if per_head else D, generator=gen, device="cuda")
        beta = torch.rand(B, T, H, generator=gen, device="cuda").bfloat16()
        inputs[per_head] = (q, k, v, g, beta)
    # rows outside, gate kinds inside: a time box ends with both kinds of the likeliest rows
    for chunk, bk, warps in [row for row in ROWS if row[0] in args.chunks]:
        for per_head, xs in inputs.items():
            old = DeltaConfig(**BASE[chunk, per_head])
            new = DeltaConfig(**{**BASE[chunk, per_head], "register_prep": True, "prep_block_k": bk,
                                 "prep_warps": warps})
            key = f"{'per_head' if per_head else 'per_key'} C={chunk} key block {bk} warps {warps}"
            a, b = prep(*xs, D ** -0.5, old), prep(*xs, D ** -0.5, new)
            errs = [float((x.double() - y.double()).norm() / y.double().norm()) for x, y in zip(b, a)]
            row = {"rel_err_vs_scratch_prep": dict(zip(("qt", "kt", "A", "w", "u0", "b_C"), errs)),
                   "prep_ms_scratch": do_bench(lambda: prep(*xs, D ** -0.5, old), rep=50, return_mode="median"),
                   "prep_ms_registers": do_bench(lambda: prep(*xs, D ** -0.5, new), rep=50, return_mode="median")}
            if variant is not None:
                run = lambda: variant.prep(*xs, D ** -0.5, chunk, bk, warps, dot_precision(xs[0].dtype))  # noqa: E731
                row["variant_rel_err_vs_scratch_prep"] = [float((x.double() - y.double()).norm() / y.double().norm())
                                                          for x, y in zip(run(), a)]
                row["prep_ms_variant"] = do_bench(run, rep=50, return_mode="median")
            with torch.no_grad():
                row["fwd_ms_scratch"] = do_bench(lambda: delta_scan_fwd(*xs, None, D ** -0.5, old), rep=50,
                                                 return_mode="median")
                row["fwd_ms_registers"] = do_bench(lambda: delta_scan_fwd(*xs, None, D ** -0.5, new), rep=50,
                                                   return_mode="median")
            res["rows"][key] = row
            print(key, json.dumps(row), flush=True)
            json.dump(res, open(path, "w"), indent=1)


if __name__ == "__main__":
    main()
