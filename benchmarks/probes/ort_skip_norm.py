"""Would ONNX Runtime's ``SkipSimplifiedLayerNormalization`` (residual Add + RMSNorm as one op) speed up a step?

Rewrites an ``onnx-ort`` step graph with onnxscript's skip-RMSNorm fusion (the rule needs the 3-D shapes of both
addends; ONNX Runtime's ops leave them unknown, so the shapes seqedge's graph passes carry through those ops are
declared first), then times the graph as exported against the rewritten one in alternating rounds (one thread,
the same random feeds) and reports both node counts and the largest output difference.

    python benchmarks/probes/ort_skip_norm.py --step ART/onnx-ort/int8/step.onnx [--step ...] [--rounds 7]
        [--calls 200] [--out benchmarks/results/ort_skip_norm.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
from ort_timing import cpu_session, random_feeds, time_rounds


def fused(path: Path) -> tuple[onnx.ModelProto, int]:
    """The graph at ``path`` with every residual Add + SimplifiedLayerNormalization that onnxscript's rule takes
    as one SkipSimplifiedLayerNormalization; (graph, fusions)."""
    import onnx_ir as ir
    from onnxscript import optimizer
    from onnxscript.rewriter.ort_fusions.skip_normalization import fuse_skip_rms_normalization

    from seqedge.export.graph_passes import _shapes

    model = ir.from_proto(onnx.load(str(path)))
    shape = _shapes(model.graph)
    for node in model.graph:
        for value in node.outputs:
            if value.shape is None and shape(value) is not None:
                # the graphs' one symbolic extent is the batch
                value.shape = ir.Shape([d if isinstance(d, int) else ir.SymbolicDim("batch") for d in shape(value)])
    count = fuse_skip_rms_normalization(model)
    optimizer.remove_unused_nodes(model)
    return ir.to_proto(model), count


def measure(step: Path, rounds: int, calls: int) -> dict:
    """One step graph as exported and fused, timed in alternating rounds."""
    original = onnx.load(str(step))
    rewritten, count = fused(step)
    sessions = {"as exported": cpu_session(original.SerializeToString(), 1),
                "skip norm fused": cpu_session(rewritten.SerializeToString(), 1)}
    vocab = int(sessions["as exported"].get_outputs()[0].shape[-1])
    feeds = random_feeds(sessions["as exported"], vocab=vocab)
    outputs = {k: s.run(None, feeds) for k, s in sessions.items()}
    diff = max(float(np.abs(x - y).max()) for x, y in zip(*outputs.values()))
    times = time_rounds(sessions, feeds, calls, rounds)
    return {"step": str(step), "fusions": count,
            "nodes": {"as exported": len(original.graph.node), "skip norm fused": len(rewritten.graph.node)},
            "max_abs_output_difference": diff, "p50_ms_by_round": times,
            "p50_ms": {k: float(np.median(v)) for k, v in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", type=Path, required=True, action="append",
                        help="an onnx-ort variant's step.onnx (repeatable)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (default: %(default)s)")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per round (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="write the result as JSON here too")
    args = parser.parse_args()
    from seqedge.evaluate.run_info import run_metadata

    rows = [measure(step, args.rounds, args.calls) for step in args.step]
    result = {"meta": run_metadata(rounds=args.rounds, calls=args.calls, threads=1), "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    for row in rows:
        print(json.dumps({k: row[k] for k in ("step", "fusions", "nodes", "max_abs_output_difference", "p50_ms")}))


if __name__ == "__main__":
    main()
