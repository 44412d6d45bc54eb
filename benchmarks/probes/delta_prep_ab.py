"""The delta rule's prep against a baseline copy of its module, timed in alternating rounds on one card.

    git show REF:kernels/delta_prep_triton.py > /tmp/base_prep.py
    python benchmarks/probes/delta_prep_ab.py --baseline /tmp/base_prep.py --out DIR [--rounds N]
        -> DIR/delta_prep_ab.json

The benchmark's shape (B=1, H=16, dk=dv=128, bf16) on one piece of ``delta_operands.PIECE`` tokens, both gate
kinds, chunks 64 and 32, key blocks 32 and 64, 4 and 8 warps (``--launches``). Each (variant, config) is timed
by ``triton.testing.do_bench`` (median) in ``--rounds`` alternating rounds, so a drift of the card's clock hits
both; the outputs are compared with the baseline's (relative L2 error, the largest of the six operands).
``--low-dots`` adds the new prep with w and u0 from operands in the inputs' dtype.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from delta_kernels import D, inputs, rel


def load_module(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", required=True, help="a copy of kernels/delta_prep_triton.py to compare with")
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--launches", nargs="+", default=["64:32:4", "64:64:4", "64:32:8", "64:64:8", "32:32:4",
                                                      "32:64:4", "32:32:8", "32:64:8"],
                    help="CHUNK:KEY_BLOCK:WARPS of each prep timed (default: %(default)s)")
    ap.add_argument("--low-dots", action="store_true", help="also the new prep with low_dots=True")
    args = ap.parse_args()
    from seqedge.kernels import delta_operands
    from seqedge.kernels import delta_prep_triton as new
    from seqedge.kernels.chunk_scan_triton import dot_precision
    from triton.testing import do_bench

    old = load_module(args.baseline, "baseline_delta_prep")
    P = delta_operands.PIECE
    scale = D ** -0.5
    rows = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    launches = [tuple(map(int, x.split(":"))) for x in args.launches]
    for per_head in (True, False):
        q, k, v, g, beta = (x[:, :P].contiguous() for x in inputs(P, per_head))
        g = g.unsqueeze(-1) if per_head else g
        prec = dot_precision(q.dtype)
        for chunk, bk, warps in launches:
            call = {name: functools.partial(m.prep, q, k, v, g, beta, scale, chunk, bk, warps, prec)
                    for name, m in (("baseline", old), ("new", new))}
            if args.low_dots:
                call["new_low_dots"] = functools.partial(new.prep, q, k, v, g, beta, scale, chunk, bk, warps,
                                                         prec, low_dots=True)
            row = {"kind": "per_head" if per_head else "per_key", "chunk": chunk, "block_k": bk,
                   "warps": warps}
            try:
                base = call["baseline"]()
                for name, fn in call.items():
                    if name != "baseline":
                        row[f"{name}_rel_err"] = max(rel(x, y) for x, y in zip(fn(), base))
                times = {name: [] for name in call}
                for _ in range(args.rounds):
                    for name, fn in call.items():
                        times[name].append(do_bench(fn, warmup=10, rep=50, return_mode="median"))
                row.update({f"{name}_ms": statistics.median(t) for name, t in times.items()})
                for name in call:
                    if name != "baseline":
                        row[f"{name}_over_baseline"] = row[f"{name}_ms"] / row["baseline_ms"]
            except Exception as e:  # noqa: BLE001  a probe: record and go on
                row["error"] = repr(e)[:300]
            rows.append(row)
            print(row, flush=True)
            (out / "delta_prep_ab.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
