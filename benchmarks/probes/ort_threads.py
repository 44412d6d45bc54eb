"""ONNX Runtime's raw step under thread counts and thread-pool settings, timed in alternating rounds.

    python benchmarks/probes/ort_threads.py --artifact ART [--variant onnx-ort/int8] [--rounds 5] [--steps 200]
        [--out benchmarks/results/ort_threads.json]

One ``InferenceSession`` of the variant's ``step.onnx`` per setting (intra-op threads 1 or 2; with 2, the pool's
spinning on or off and ``session.dynamic_block_base``), the state carried from call to call. Each round runs every
setting for ``--steps`` calls in turn, so load from elsewhere hits all alike; the p50 of each round's calls is
recorded, and the median over rounds reported. Why: with two threads the int8 step of mamba2-130m ran slower than
with one (``int8_packing.md``), and the llama.cpp comparison runs both sides at two.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

SETTINGS = {
    "1 thread": (1, {}),
    "2 threads": (2, {}),
    "2 threads, no spinning": (2, {"session.intra_op.allow_spinning": "0"}),
    "2 threads, dynamic_block_base 4": (2, {"session.dynamic_block_base": "4"}),
    "2 threads, no spinning, dynamic_block_base 4": (2, {"session.intra_op.allow_spinning": "0",
                                                        "session.dynamic_block_base": "4"}),
}


def stepper(path: Path, threads: int, config: dict[str, str]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        shape = [1 if isinstance(d, str) else d for d in i.shape]
        feeds[i.name] = np.array([5], np.int64) if i.name == "tokens" else np.zeros(shape, np.float32)
    states = [i.name for i in sess.get_inputs() if i.name != "tokens"]

    def call() -> None:
        out = sess.run(None, feeds)
        feeds.update(zip(states, out[1:]))
    return call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", required=True)
    ap.add_argument("--variant", default="onnx-ort/int8")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "ort_threads.json"))
    args = ap.parse_args()
    path = Path(args.artifact) / args.variant / "step.onnx"
    calls = {name: stepper(path, threads, config) for name, (threads, config) in SETTINGS.items()}
    for call in calls.values():
        for _ in range(20):
            call()
    rounds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, call in calls.items():
            times = []
            for _ in range(args.steps):
                t0 = time.perf_counter_ns()
                call()
                times.append(time.perf_counter_ns() - t0)
            rounds[name].append(float(np.median(times)) / 1e6)
    import onnxruntime as ort

    result = {"artifact": str(args.artifact), "variant": args.variant, "onnxruntime": ort.__version__,
              "cpus": os.cpu_count(), "load_average": list(os.getloadavg()), "rounds": args.rounds,
              "steps": args.steps,
              "settings": {name: {"threads": SETTINGS[name][0], "config": SETTINGS[name][1],
                                  "p50_ms_by_round": rounds[name], "p50_ms": statistics.median(rounds[name])}
                           for name in calls}}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for name, row in result["settings"].items():
        print(f"{name:48s} {row['p50_ms']:8.3f} ms  (rounds: {', '.join(f'{x:.2f}' for x in row['p50_ms_by_round'])})")


if __name__ == "__main__":
    main()
