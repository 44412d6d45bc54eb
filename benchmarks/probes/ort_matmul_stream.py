"""How fast ONNX Runtime streams a float32 step's weights: the onnx-ort step of an artifact against its MatMuls
alone, and against this machine's read bandwidth.

The fp32 decode of a real-size model reads every weight once a step, so its floor is bytes / bandwidth. This
probe splits the step's time into the matrix products and the rest:

- ``step``: the artifact's onnx-ort ``step.onnx`` as exported, on fixed random inputs;
- ``matmuls``: a graph of the same products (MatMul nodes, and the ``Gemm`` a tied head reads the embedding table
  through) on the same weights (the artifact's external data), each fed its own input vector, nothing else: what
  the products alone cost;
- ``read``: the time to read the same number of bytes once (``torch.sum`` of a float32 array that size, the
  process's threads), the ceiling a streaming kernel can reach.

Timed in alternating rounds (p50 of each) on ``--threads`` intra-op threads (default 2, as ``llama_cpp.py`` gives
both sides here). The MatMul graph is written to a temporary folder inside the artifact, beside hard links to its
weights (ONNX Runtime reads external data only from the model's own folder).

    python benchmarks/probes/ort_matmul_stream.py --artifact ART [--variant onnx-ort/fp32] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper
from ort_timing import cpu_session, median_ms, random_feeds

from seqedge.evaluate.run_info import run_metadata


def matmul_graph(step: Path) -> tuple[onnx.ModelProto, int]:
    """The step's MatMul and Gemm nodes whose weight is an initializer, each on a graph input of its own, and their
    weights' bytes; the initializers keep pointing at the artifact's external data file."""
    model = onnx.load(str(step), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    nodes, inputs, outputs, weights = [], [], [], {}
    for n in model.graph.node:
        if n.op_type not in ("MatMul", "Gemm") or n.input[1] not in inits:
            continue
        w = inits[n.input[1]]
        trans_b = {a.name: a.i for a in n.attribute}.get("transB", 0) if n.op_type == "Gemm" else 0
        k, m = (w.dims[-1], w.dims[-2]) if trans_b else (w.dims[-2], w.dims[-1])
        x, y = f"x{len(nodes)}", f"y{len(nodes)}"
        inputs.append(helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, [1, k]))
        outputs.append(helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, [1, m]))
        nodes.append(helper.make_node(n.op_type, [x, w.name], [y], **({"transB": 1} if trans_b else {})))
        weights[w.name] = w
    nbytes = sum(math.prod(w.dims) * 4 for w in weights.values())
    graph = helper.make_graph(nodes, "matmuls", inputs, outputs, list(weights.values()))
    out = helper.make_model(graph, opset_imports=model.opset_import)
    return out, nbytes


def read_ms(nbytes: int, calls: int) -> float:
    """Median ms to read ``nbytes`` of float32 once (torch.sum over the array, torch's threads)."""
    import torch

    a = torch.ones(nbytes // 4, dtype=torch.float32)
    a.sum()
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        a.sum()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", type=Path, required=True)
    ap.add_argument("--variant", default="onnx-ort/fp32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/ort_matmul_stream.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    step = args.artifact / args.variant / "step.onnx"
    model, nbytes = matmul_graph(step)
    with tempfile.TemporaryDirectory(dir=step.parent.parent) as tmp:
        # the MatMul graph's initializers name the step's external data files: hard links to them sit beside it
        # (ONNX Runtime refuses data outside the model's folder, symbolic links resolved)
        for data in {e.value for i in model.graph.initializer for e in i.external_data if e.key == "location"}:
            os.link(step.parent / data, Path(tmp) / data)
        path = Path(tmp) / "matmuls.onnx"
        onnx.save(model, str(path))
        sessions = {"step": cpu_session(step, args.threads), "matmuls": cpu_session(path, args.threads)}
        feeds = {k: random_feeds(s) for k, s in sessions.items()}
        times: dict[str, list[float]] = {k: [] for k in [*sessions, "read"]}
        for _ in range(args.rounds):
            for name, sess in sessions.items():
                times[name].append(median_ms(sess, feeds[name], args.calls))
            times["read"].append(read_ms(nbytes, args.calls))
    p50 = {k: float(np.median(v)) for k, v in times.items()}
    result = {"meta": run_metadata(artifact=str(args.artifact), variant=args.variant, threads=args.threads,
                                   rounds=args.rounds, calls=args.calls),
              "matmul_weight_bytes": nbytes, "matmul_nodes": len(model.graph.node),
              "p50_ms_by_round": times, "p50_ms": p50,
              "gb_per_s": {"matmuls": nbytes / p50["matmuls"] / 1e6, "read": nbytes / p50["read"] / 1e6},
              "matmul_share_of_step": p50["matmuls"] / p50["step"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("matmul_weight_bytes", "p50_ms", "gb_per_s", "matmul_share_of_step")},
                     indent=1))


if __name__ == "__main__":
    main()
