"""The delta rule's prep in one launch against two (w and u0 in a launch of their own), and optionally against a
baseline copy of its module, timed in alternating rounds on one card.

    python benchmarks/probes/delta_prep_ab.py --out DIR [--rounds N] [--baseline FILE]
        -> DIR/delta_prep_ab.json, DIR/delta_prep_ab.md (the table, also printed)

    git show REF:kernels/delta_prep_triton.py > /tmp/base_prep.py     # for --baseline

The benchmark's shape (B=1, H=16, dk=dv=128, bf16) on one piece of ``delta_operands.PIECE`` tokens, both gate
kinds, chunks 64 and 32, key blocks 32 and 64, 4 and 8 warps. Variants: ``single`` and ``split`` (this module's
prep without and with ``split``) and, with ``--baseline``, the copy's prep. Each (variant, config) is timed by
``triton.testing.do_bench`` (median) in ``--rounds`` alternating rounds, so a drift of the card's clock hits all;
each variant's outputs are compared with ``single``'s (the largest relative L2 error of the six operands), and
one profiled call of the split gives each of its two launches' device time.
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
from config_timing import cuda_kernels  # noqa: E402
from delta_kernels import D, inputs, rel  # noqa: E402

GRID = [(chunk, bk, warps) for chunk in (64, 32) for bk, warps in ((32, 4), (64, 4), (32, 8), (64, 8))]


def load_module(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def variants(xs: tuple, chunk: int, bk: int, warps: int, baseline) -> dict:
    """name -> a call of that variant's prep on the inputs ``xs`` (q, k, v, g, beta)."""
    from seqedge.kernels import delta_prep_triton as new
    from seqedge.kernels.chunk_scan_triton import dot_precision

    args = (*xs, D ** -0.5, chunk, bk, warps, dot_precision(xs[0].dtype))
    calls = {"single": functools.partial(new.prep, *args, split=False),
             "split": functools.partial(new.prep, *args, split=True)}
    if baseline is not None:
        calls["baseline"] = functools.partial(baseline.prep, *args)
    return calls


def measure(calls: dict, rounds: int) -> dict:
    """One row's measurements: each variant's median ms over the rounds, its error against ``single``, and the
    split's launches' device times (us, from one profiled call)."""
    from triton.testing import do_bench

    ref = calls["single"]()
    row = {f"{name}_rel_err": max(rel(x, y) for x, y in zip(fn(), ref)) for name, fn in calls.items()
           if name != "single"}
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            times[name].append(do_bench(fn, warmup=10, rep=50, return_mode="median"))
    row.update({f"{name}_ms": statistics.median(t) for name, t in times.items()})
    row["split_over_single"] = row["split_ms"] / row["single_ms"]
    if "baseline_ms" in row:
        row["single_over_baseline"] = row["single_ms"] / row["baseline_ms"]
    row["split_launches_us"] = {k["name"][:60]: k["us"] for k in cuda_kernels(calls["split"])
                                if "prep" in k["name"] or "inverse" in k["name"]}
    return row


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table: times in ms, the split's two launches in us."""
    base = any("baseline_ms" in r for r in rows)
    head = ["gates", "chunk", "key block", "warps", *(["baseline"] if base else []), "single", "split",
            "split / single", "split: 1st launch us", "split: products us", "max rel err"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["kind"], r["chunk"], r["block_k"], r["warps"]]
        if "error" in r:
            lines.append("| " + " | ".join(map(str, cells)) + f" | {r['error'][:120]} |")
            continue
        launches = list(r["split_launches_us"].items())
        first = next((us for name, us in launches if "inverse" not in name), float("nan"))
        products = next((us for name, us in launches if "inverse" in name), float("nan"))
        errs = [v for k, v in r.items() if k.endswith("_rel_err")]
        cells += [*([f"{r['baseline_ms']:.3f}"] if base else []), f"{r['single_ms']:.3f}", f"{r['split_ms']:.3f}",
                  f"{r['split_over_single']:.2f}", f"{first:.1f}", f"{products:.1f}", f"{max(errs):.1e}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", help="a copy of kernels/delta_prep_triton.py to time beside this one")
    args = ap.parse_args()
    from seqedge.kernels import delta_operands

    baseline = load_module(args.baseline, "baseline_delta_prep") if args.baseline else None
    P = delta_operands.PIECE
    rows = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for per_head in (True, False):
        xs = tuple(x[:, :P].contiguous() for x in inputs(P, per_head))
        if per_head:
            xs = (*xs[:3], xs[3].unsqueeze(-1), xs[4])
        for chunk, bk, warps in GRID:
            row = {"kind": "per_head" if per_head else "per_key", "chunk": chunk, "block_k": bk, "warps": warps}
            try:
                row.update(measure(variants(xs, chunk, bk, warps, baseline), args.rounds))
            except Exception as e:  # noqa: BLE001  a probe: record and go on
                row["error"] = repr(e)[:300]
            rows.append(row)
            print(row, flush=True)
            (out / "delta_prep_ab.json").write_text(json.dumps(rows, indent=1))
    md = table(rows)
    (out / "delta_prep_ab.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
