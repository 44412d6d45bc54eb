"""How a step's state reaches ONNX Runtime, timed in alternating rounds on one variant's step graph.

    python benchmarks/probes/ort_state_update.py --artifact ART [--variant onnx-ort/int4] [--threads 2]
        [--rounds 5] [--calls 60] [--out benchmarks/results/ort_state_update.json]

Four ways to run the same step with the state carried from call to call, each from the same random state:

- ``plain``: ``InferenceSession.run``, the new state in arrays ONNX Runtime allocates (a non-donated
  ``Session.step``);
- ``bound, states apart``: the donated path's ``StepChain`` with no state updated in place (two buffers per state,
  alternating: what the portable graphs get);
- ``bound, in place``: the donated path as the export marked it (``Variant.info["step_in_place_states"]``);
- ``no scan``: the plain run of a copy of the graph whose ``LinearAttention`` nodes pass their value input through
  and whose scan states are not outputs: what the scans cost in the step (not a model: its outputs are not used).

Outputs of the three real ways after ``--calls`` carried steps are compared bit for bit. Every round times each way
for ``--calls`` calls in a new random order; the median over rounds of each round's median is reported. Last, the
plain step's time by op type from ONNX Runtime's profiler (``ort_timing.ort_profile``; the profiler adds a few
microseconds to every node).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from ort_timing import cpu_session, ort_profile, random_feeds

from seqedge.artifact import read_manifest
from seqedge.evaluate.run_info import run_metadata
from seqedge.runtimes.ort_step_chain import StepChain


def plain_steps(session: Any, names: list[str], feeds: dict[str, np.ndarray]) -> Callable[[int], list]:
    outputs = ["logits", *(f"new_{n}" for n in names)]

    def run(calls: int) -> list:
        state = {n: feeds[n] for n in names}
        times, out = [], []
        for _ in range(calls):
            t0 = time.perf_counter()
            out = session.run(outputs, {**feeds, **state})       # feeds: tokens, and inputs nothing reads
            times.append(time.perf_counter() - t0)
            state = dict(zip(names, out[1:]))
        return [times, out]
    return run


def chain_steps(session: Any, names: list[str], feeds: dict[str, np.ndarray],
                in_place: set[str]) -> Callable[[int], list]:
    def run(calls: int) -> list:
        chain = StepChain(session, names, [feeds[n] for n in names], in_place)
        times, logits = [], None
        for _ in range(calls):
            t0 = time.perf_counter()
            logits, _ = chain.step(session, feeds["tokens"])
            times.append(time.perf_counter() - t0)
        return [times, [logits, *chain.current]]
    return run


def without_scans(path: Path, out: Path) -> tuple[Path, list[str]]:
    """A copy of the step graph at ``path`` with every LinearAttention replaced by Identity on its value input and
    its state output dropped; returns the copy and the states it still carries."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    dropped, nodes = set(), []
    for node in model.graph.node:
        if node.op_type == "LinearAttention":
            nodes.append(helper.make_node("Identity", [node.input[2]], [node.output[0]]))
            dropped.add(node.output[1])
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept = [o for o in model.graph.output if o.name not in dropped]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    onnx.save(model, str(out), save_as_external_data=True, location=out.name + ".data")
    return out, [o.name.removeprefix("new_") for o in kept if o.name.startswith("new_")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--variant", default="onnx-ort/int4", help="target/tag (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ort_state_update.json"))
    args = parser.parse_args()

    manifest = read_manifest(args.artifact)
    target, tag = args.variant.split("/")
    variant = manifest.variant(target, tag)
    path = manifest.path(variant, "step")
    in_place = set(variant.info.get("step_in_place_states", []))
    names = [s.name for s in manifest.state_specs]
    session = cpu_session(path, args.threads)
    feeds = random_feeds(session)
    feeds["tokens"] = np.array([5], np.int64)
    ways: dict[str, Callable[[int], list]] = {
        "plain": plain_steps(session, names, feeds),
        "bound, states apart": chain_steps(session, names, feeds, set()),
        "bound, in place": chain_steps(session, names, feeds, in_place),
    }
    with tempfile.TemporaryDirectory() as tmp:
        ablated, carried = without_scans(path, Path(tmp) / "no_scan.onnx")
        ways["no scan"] = plain_steps(cpu_session(ablated, args.threads), carried, feeds)
        final = {k: ways[k](args.calls)[1] for k in ("plain", "bound, states apart", "bound, in place")}
        identical = {k: all(np.array_equal(a, b) for a, b in zip(final["plain"], v)) for k, v in final.items()}
        rounds: dict[str, list[float]] = {k: [] for k in ways}
        rng = np.random.default_rng(1)
        for _ in range(args.rounds):
            for name in rng.permutation(list(ways)):
                times = ways[name](args.calls)[0]
                rounds[name].append(float(np.median(times[5:])) * 1e3)
    result = {"meta": run_metadata(artifact=str(args.artifact), variant=args.variant, threads=args.threads,
                                   rounds=args.rounds, calls=args.calls, in_place_states=len(in_place),
                                   states=len(names)),
              "identical_to_plain_after_calls": identical,
              "p50_ms_by_round": rounds, "p50_ms": {k: statistics.median(v) for k, v in rounds.items()},
              "plain_profile_us_per_step": ort_profile(path, args.threads, steps=100)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("identical_to_plain_after_calls", "p50_ms", "plain_profile_us_per_step")},
                     indent=1))


if __name__ == "__main__":
    main()
