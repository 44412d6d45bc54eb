"""What copying a real-size model's ExecuTorch step outputs through numpy buys its Python decode steps.

The executorch runtime copies a step's outputs of torch's parallel grain or more out of the program's memory with
numpy on the calling thread, instead of torch's copies, whose pool threads keep spinning after a parallel copy on
the cores XNNPACK's own pool runs the next step on (``ExecuTorchBackend._numpy_copies``). Per variant, rounds of
two processes in alternating order, each with one session: as loaded (``numpy copies``), or with its
``numpy_copies_from`` set past every output (``torch copies``, the runtime before). Each process records its logits
after the same 16 tokens (compared bit for bit between the sides), then times blocks of donated decode steps (what
``generate`` runs) and of plain steps, and last a 256-token prefill (the same code on both sides: chunk calls keep
torch's copies, so its rates show the spread between processes). Reported: the median over rounds of each
process's p50 (steps) or rate (prefill).

    python benchmarks/probes/et_numpy_copies_ab.py --artifact ART [--variants fp32,int8,int4] [--rounds 4]
        [--calls 20] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_ab import alternating_p50, last_logits  # noqa: E402

SIDES = ("numpy copies", "torch copies")


def one_process(artifact: Path, variant: str, side: str, calls: int) -> dict:
    from seqedge.runtimes import load

    session = load(artifact, "executorch", quantization=variant)
    if side == "torch copies":
        session.backend.numpy_copies_from = sys.maxsize
    logits = last_logits({side: session}, np.random.default_rng(0).integers(0, 256, 16))[side]
    donated, plain = (float(np.median(alternating_p50({side: session}, 5, 3, calls, donate=donate)[side]))
                      for donate in (True, False))
    prompt = np.random.default_rng(1).integers(0, 256, (1, 256))
    started = time.perf_counter()               # last: its chunk calls copy on torch's pool on both sides
    session.prefill(prompt, session.init_state(1), logits="last")
    prefill = 256 / (time.perf_counter() - started)
    return {"donated_ms": donated, "plain_ms": plain, "prefill_tokens_per_s": prefill, "logits": logits[0].tolist(),
            "huge_pages": session.describe()["huge_pages"]}


def one_variant(artifact: Path, variant: str, rounds: int, calls: int) -> dict:
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for r in range(rounds):
        for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
            done = subprocess.run([sys.executable, __file__, "--one", side, "--artifact", str(artifact),
                                   "--variants", variant, "--calls", str(calls)],
                                  check=True, capture_output=True, text=True)
            runs[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
    same = all(np.array_equal(a["logits"], b["logits"]) for a, b in zip(*runs.values()))
    out = {"variant": variant, "huge_pages": runs["numpy copies"][-1]["huge_pages"], "same_logits": bool(same)}
    for key in ("donated_ms", "plain_ms", "prefill_tokens_per_s"):
        out[key] = {side: float(np.median([run[key] for run in runs[side]])) for side in SIDES}
        out[key + "_by_round"] = {side: [run[key] for run in runs[side]] for side in SIDES}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--variants", default="fp32,int8,int4", help="comma-separated (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=4, help="processes per side, alternating (default: %(default)s)")
    parser.add_argument("--calls", type=int, default=20, help="timed steps per block (default: %(default)s)")
    parser.add_argument("--one", choices=SIDES, help=argparse.SUPPRESS)     # one process's side, JSON on stdout
    parser.add_argument("--out", type=Path, help="write the result as JSON here too")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_process(args.artifact, args.variants, args.one, args.calls)))
        return
    from seqedge.evaluate.run_info import run_metadata

    rows = []
    for variant in args.variants.split(","):
        rows.append(one_variant(args.artifact, variant, args.rounds, args.calls))
        r = rows[-1]
        d, p, f = r["donated_ms"], r["plain_ms"], r["prefill_tokens_per_s"]
        print(f"executorch {variant}: donated {d['numpy copies']:.2f} vs {d['torch copies']:.2f} ms, plain "
              f"{p['numpy copies']:.2f} vs {p['torch copies']:.2f} ms, prefill {f['numpy copies']:.0f} vs "
              f"{f['torch copies']:.0f} tok/s; same logits {r['same_logits']}", flush=True)
    result = {"meta": run_metadata(artifact=str(args.artifact), rounds=args.rounds, calls=args.calls), "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
