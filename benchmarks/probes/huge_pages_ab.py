"""What 2 MiB pages under a runtime's weights buy a decode step (``runtimes/huge_pages.py``).

Per variant, in a process of its own: a session loaded with ``huge_pages=True`` (the default: its memory advised
onto huge pages once loaded), then one with ``huge_pages=False`` (loaded after the advice, so its memory keeps
4 KiB pages; the process's ``AnonHugePages`` before and after its load say how much of it the kernel backed with
huge pages anyway). Both step a donated decode loop (``Session.step(..., donate=True)``, what ``generate`` runs)
in alternating blocks of consecutive steps; the median over rounds of each block's p50 is reported, with both
sessions' logits after the same tokens compared bit for bit.

    python benchmarks/probes/huge_pages_ab.py --artifact ART [--runtime onnxruntime-fused]
        [--variants fp32,int8,int4] [--rounds 12] [--calls 20] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_ab import alternating_p50, last_logits  # noqa: E402


def process_huge_bytes() -> int:
    from seqedge.runtimes.huge_pages import SMAPS, parse_smaps

    return sum(m.huge for m in parse_smaps(SMAPS.read_text()))


def one_variant(artifact: Path, runtime: str, variant: str, rounds: int, calls: int) -> dict:
    from seqedge.runtimes import load

    huge = load(artifact, runtime, quantization=variant, huge_pages=True)
    before = process_huge_bytes()
    plain = load(artifact, runtime, quantization=variant, huge_pages=False)
    sessions = {"huge pages": huge, "4 KiB pages": plain}
    tokens = np.random.default_rng(0).integers(0, huge.vocab_size, 16)
    last = last_logits(sessions, tokens)
    times = alternating_p50(sessions, int(tokens[0]), rounds, calls)
    p50 = {name: float(np.median(v)) for name, v in times.items()}
    return {"variant": variant, "runtime": runtime, "huge_pages": huge.describe()["huge_pages"],
            "plain_session_huge_mib": (process_huge_bytes() - before) / 2**20,
            "same_logits": bool(np.array_equal(last["huge pages"], last["4 KiB pages"])),
            "p50_ms": p50, "p50_ms_by_round": times, "huge_over_plain": p50["huge pages"] / p50["4 KiB pages"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--runtime", default="onnxruntime-fused")
    parser.add_argument("--variants", default="fp32,int8,int4", help="comma-separated (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=12, help="alternating rounds (default: %(default)s)")
    parser.add_argument("--calls", type=int, default=20, help="timed steps per block (default: %(default)s)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)     # one variant, JSON on stdout
    parser.add_argument("--out", type=Path, help="write the result as JSON here too")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_variant(args.artifact, args.runtime, args.variants, args.rounds, args.calls)))
        return
    from seqedge.evaluate.run_info import run_metadata

    rows = []
    for variant in args.variants.split(","):
        done = subprocess.run([sys.executable, __file__, "--one", "--artifact", str(args.artifact), "--runtime",
                               args.runtime, "--variants", variant, "--rounds", str(args.rounds), "--calls",
                               str(args.calls)], check=True, capture_output=True, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{args.runtime} {variant}: huge {r['p50_ms']['huge pages']:.3f} ms, 4 KiB {r['p50_ms']['4 KiB pages']:.3f}"
              f" ms, ratio {r['huge_over_plain']:.3f}; {r['huge_pages']}; same logits {r['same_logits']}", flush=True)
    result = {"meta": run_metadata(artifact=str(args.artifact), rounds=args.rounds, calls=args.calls), "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
