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
import time
from pathlib import Path

import numpy as np


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
    last = {}
    for name, s in sessions.items():
        state = s.init_state(1)
        for t in tokens:
            logits, state = s.step(np.array([t]), state, donate=True)
        last[name] = logits
    states = {name: s.init_state(1) for name, s in sessions.items()}
    one = np.array([int(tokens[0])])
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for r in range(args.rounds):
        for name in ("a", "b") if r % 2 == 0 else ("b", "a"):
            s, state, block = sessions[name], states[name], []
            for _ in range(3):
                _, state = s.step(one, state, donate=True)
            for _ in range(args.calls):
                started = time.perf_counter()
                _, state = s.step(one, state, donate=True)
                block.append(time.perf_counter() - started)
            states[name] = state
            times[name].append(float(np.median(block)) * 1e3)
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
