"""What reusing dropped states' blocks saves a plain decode loop on the C++ library's Python backend.

Two sessions on one artifact's ExecuTorch variant through ``libseqedge.so``, one with the backend's block pool
(``runtimes.block_pool``: a new state goes to the block the dropped state gave back) and one whose pool keeps no
block (every new state a fresh allocation), step a loop that drops each old state
(``state = session.step(tokens, state)[1]``) in alternating blocks of consecutive calls; the median over rounds of
each block's p50 is reported, with the logits and states of both compared bit for bit after the same tokens.

    python benchmarks/probes/block_pool_ab.py --artifact ART --library build/cpp/libseqedge.so [--variant int8]
        [--rounds 9] [--calls 300] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from seqedge.artifact import read_manifest
from seqedge.evaluate.run_info import run_metadata
from seqedge.runtimes.block_pool import BlockPool
from seqedge.runtimes.executorch_native import NativeExecuTorchBackend
from seqedge.runtimes.session import Session


def session(artifact: Path, variant: str, library: Path, keep: int) -> Session:
    manifest = read_manifest(artifact)
    chosen = manifest.variant("executorch", variant)
    backend = NativeExecuTorchBackend(manifest, chosen, library, threads=1, blocks=BlockPool(keep=keep))
    return Session(manifest, chosen, backend, "executorch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--library", type=Path, required=True, help="libseqedge.so (runners/cpp)")
    parser.add_argument("--variant", default="int8", help="the ExecuTorch variant (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=9, help="alternating rounds (default: %(default)s)")
    parser.add_argument("--calls", type=int, default=300, help="timed steps per block (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="write the result as JSON here too")
    args = parser.parse_args()

    sessions = {"pool": session(args.artifact, args.variant, args.library, keep=2),
                "no pool": session(args.artifact, args.variant, args.library, keep=0)}
    tokens = np.random.default_rng(0).integers(0, sessions["pool"].vocab_size, 64)
    finals = {}
    for name, s in sessions.items():
        state = s.init_state(1)
        for t in tokens:
            logits, state = s.step(np.array([t]), state)
        finals[name] = (logits, state.numpy())
    same = bool(np.array_equal(finals["pool"][0], finals["no pool"][0])
                and all(np.array_equal(x, y) for x, y in zip(finals["pool"][1], finals["no pool"][1])))

    states = {name: s.init_state(1) for name, s in sessions.items()}
    one = np.array([5])
    times: dict[str, list[float]] = {name: [] for name in sessions}
    rng = np.random.default_rng(1)
    for _ in range(args.rounds):
        for name in rng.permutation(list(sessions)):
            s = sessions[name]
            for _ in range(30):
                states[name] = s.step(one, states[name])[1]
            ts = []
            for _ in range(args.calls):
                t0 = time.perf_counter_ns()
                states[name] = s.step(one, states[name])[1]
                ts.append(time.perf_counter_ns() - t0)
            times[name].append(float(np.median(ts)) / 1e3)
    p50 = {name: float(np.median(v)) for name, v in times.items()}
    result = {"meta": run_metadata(artifact=str(args.artifact), library=str(args.library), variant=args.variant,
                                   rounds=args.rounds, calls=args.calls),
              "unit": "us per Session.step (plain, the old state dropped), p50 of each block",
              "identical_after_steps": same, "p50_us_by_round": times, "p50_us": p50,
              "saved_us": p50["no pool"] - p50["pool"]}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("identical_after_steps", "p50_us", "saved_us")}, indent=1))


if __name__ == "__main__":
    main()
