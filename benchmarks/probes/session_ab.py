"""One variant of two artifacts (e.g. one checkpoint exported by two commits) stepped in alternating blocks of a
donated decode loop on one runtime, with their program sizes and how far apart their logits are.

    python benchmarks/probes/session_ab.py --a OLD_ART --b NEW_ART --runtime executorch --variant int8
        [--rounds 12] [--calls 20] [--out FILE]

Each block runs ``--calls`` consecutive ``Session.step(..., donate=True)`` calls (what ``generate`` runs) after 3
untimed ones; the median over rounds of each block's p50 is reported. Both sessions first step the same 16 tokens
from a zero state; the largest and mean difference of their last logits are reported (0 where the programs compute
the same thing).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_ab import alternating_p50, last_logits  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", type=Path, required=True, help="the first artifact (e.g. the baseline)")
    parser.add_argument("--b", type=Path, required=True, help="the second artifact")
    parser.add_argument("--runtime", default="executorch")
    parser.add_argument("--variant", default="int8")
    parser.add_argument("--rounds", type=int, default=12, help="alternating rounds (default: %(default)s)")
    parser.add_argument("--calls", type=int, default=20, help="timed steps per block (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="write the result as JSON here too")
    args = parser.parse_args()
    from seqedge.evaluate.run_info import run_metadata
    from seqedge.runtimes import load

    sessions = {k: load(path, args.runtime, quantization=args.variant) for k, path in (("a", args.a), ("b", args.b))}
    tokens = np.random.default_rng(0).integers(0, sessions["a"].vocab_size, 16)
    last = last_logits(sessions, tokens)
    times = alternating_p50(sessions, int(tokens[0]), args.rounds, args.calls)
    p50 = {name: float(np.median(v)) for name, v in times.items()}
    diff = np.abs(last["a"] - last["b"])
    result = {"meta": run_metadata(a=str(args.a), b=str(args.b), runtime=args.runtime, variant=args.variant,
                                   rounds=args.rounds, calls=args.calls),
              "file_mib": {k: sum(f["bytes"] for f in s.variant.files.values()) / 2**20 for k, s in sessions.items()},
              "p50_ms": p50, "p50_ms_by_round": times, "b_over_a": p50["b"] / p50["a"],
              "last_logits_max_abs_difference": float(diff.max()), "last_logits_mean_abs_difference": float(diff.mean())}
    print(json.dumps({k: v for k, v in result.items() if k not in ("meta", "p50_ms_by_round")}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
