"""Two ONNX graphs of one signature (e.g. one variant's step exported by two commits) timed in alternating rounds
on ONNX Runtime's CPU provider, on the same random feeds, with the largest difference of their outputs.

    python benchmarks/probes/ort_ab.py --a OLD/step.onnx --b NEW/step.onnx [--threads 2] [--rounds 7]
        [--calls 40] [--last-row] [--b-config KEY=VALUE ...] [--out result.json]

``--last-row`` feeds a chunk graph's ``logits_from`` as -1 (its head on the last row, as a prompt's prefill runs
it); without it the head runs on every row. ``--b-config`` sets ONNX Runtime session config entries on the second
session (e.g. the same graph with ``session.disable_prepacking=1``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from ort_timing import cpu_session, random_feeds, time_rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", type=Path, required=True, help="the first graph (e.g. the baseline)")
    parser.add_argument("--b", type=Path, required=True, help="the second graph")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (default: %(default)s)")
    parser.add_argument("--calls", type=int, default=40, help="timed calls per round (default: %(default)s)")
    parser.add_argument("--last-row", action="store_true", help="feed a chunk graph's logits_from as -1")
    parser.add_argument("--b-config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="ONNX Runtime session config entries for the second session")
    parser.add_argument("--out", type=Path, help="write the result as JSON here too")
    args = parser.parse_args()
    from seqedge.artifact import CHUNK_LOGITS_FROM
    from seqedge.evaluate.run_info import run_metadata

    if any("=" not in entry for entry in args.b_config):
        parser.error(f"--b-config takes KEY=VALUE entries, got {args.b_config}")
    b_config = dict(entry.split("=", 1) for entry in args.b_config)
    sessions = {"a": cpu_session(args.a, args.threads), "b": cpu_session(args.b, args.threads, b_config)}
    feeds = random_feeds(sessions["a"])
    if args.last_row:
        feeds[CHUNK_LOGITS_FROM] = np.array([-1], np.int64)
    outputs = {k: s.run(None, feeds) for k, s in sessions.items()}
    diff = max(float(np.abs(x - y).max()) for x, y in zip(outputs["a"], outputs["b"]))
    times = time_rounds(sessions, feeds, args.calls, args.rounds)
    result = {"meta": run_metadata(a=str(args.a), b=str(args.b), threads=args.threads, rounds=args.rounds,
                                   calls=args.calls, last_row=args.last_row, b_config=b_config),
              "max_abs_output_difference": diff, "p50_ms_by_round": times,
              "p50_ms": {k: float(np.median(v)) for k, v in times.items()}}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("max_abs_output_difference", "p50_ms", "p50_ms_by_round")}, indent=1))


if __name__ == "__main__":
    main()
