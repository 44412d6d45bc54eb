"""ONNX Runtime's raw step under thread counts and thread-pool settings, timed in alternating rounds.

    python benchmarks/probes/ort_threads.py --artifact ART [--variant onnx-ort/int8] [--rounds 10] [--calls 150]
        [--out benchmarks/results/ort_threads.json]

One ``InferenceSession`` of the variant's ``step.onnx`` per setting (intra-op threads 1 or 2; with 2, the pool's
spinning on or off and ``session.dynamic_block_base``), all on the same random feeds. Each round times every
setting for ``--calls`` calls, in a new random order (``ort_timing.time_rounds``), so load from elsewhere hits all
alike; the median over rounds of each round's median is reported. Why: two threads can be slower than one
(``benchmarks/results/int8_packing.md``), and the llama.cpp comparison runs both sides at two.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from ort_timing import cpu_session, random_feeds, time_rounds

from seqedge.evaluate.run_info import run_metadata

SETTINGS = {
    "1 thread": (1, {}),
    "2 threads": (2, {}),
    "2 threads, no spinning": (2, {"session.intra_op.allow_spinning": "0"}),
    "2 threads, dynamic_block_base 4": (2, {"session.dynamic_block_base": "4"}),
    "2 threads, no spinning, dynamic_block_base 4": (2, {"session.intra_op.allow_spinning": "0",
                                                        "session.dynamic_block_base": "4"}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", required=True)
    ap.add_argument("--variant", default="onnx-ort/int8")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--calls", type=int, default=150)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "ort_threads.json"))
    args = ap.parse_args()
    path = Path(args.artifact) / args.variant / "step.onnx"
    sessions = {name: cpu_session(path, threads, config) for name, (threads, config) in SETTINGS.items()}
    times = time_rounds(sessions, random_feeds(next(iter(sessions.values()))), args.calls, args.rounds)
    result = {"meta": run_metadata(artifact=str(args.artifact), variant=args.variant, rounds=args.rounds,
                                   calls=args.calls),
              "settings": {name: {"threads": SETTINGS[name][0], "config": SETTINGS[name][1],
                                  "p50_ms_by_round": times[name], "p50_ms": statistics.median(times[name])}
                           for name in sessions}}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for name, row in result["settings"].items():
        print(f"{name:48s} {row['p50_ms']:8.3f} ms  (rounds: {', '.join(f'{x:.2f}' for x in row['p50_ms_by_round'])})")


if __name__ == "__main__":
    main()
