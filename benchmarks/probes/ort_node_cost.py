"""What ONNX Runtime charges per call and per node on this CPU, and its two fused ops at the models' shapes.

Each case is a small ONNX graph timed alone (p50 of many ``InferenceSession.run`` calls, 1 and 2 intra-op
threads, rounds alternating):

- ``io``: the step's inputs and outputs of an artifact (tokens and every state tensor), each through one Neg: the
  price of a call that moves a step's tensors, before any model work;
- ``relu_chain``: 24 Relu nodes on one ``[1, width]`` row: what a node costs when its kernel does almost nothing;
- ``conv``: 24 ``CausalConvWithState`` nodes (one token, kernel 4, SiLU) of ``channels`` channels;
- ``scan``: 24 ``LinearAttention`` nodes (one token, gated rule, per-head decay) of Mamba2-130M's shape
  (1 query/key head, 24 value heads, dk 128, dv 64): its 18.9 MB of state read and written per token.

    python benchmarks/probes/ort_node_cost.py --artifact ART [--out benchmarks/results/ort_node_cost.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from ort_timing import cpu_session, median_ms

LAYERS = 24


def _model(nodes: list, inputs: list, outputs: list, inits: list | None = None) -> bytes:
    from onnx import helper

    graph = helper.make_graph(nodes, "probe", inputs, outputs, inits or [])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def io_case(artifact: Path) -> tuple[bytes, dict[str, np.ndarray]]:
    """The step graph's inputs, each through one Neg to an output of its own."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from seqedge.artifact import read_manifest

    manifest = read_manifest(artifact)
    step = manifest.path(manifest.variant("onnx-ort", "fp32"), "step")
    graph_inputs = ort.InferenceSession(str(step), providers=["CPUExecutionProvider"]).get_inputs()
    nodes, inputs, outputs, feeds = [], [], [], {}
    for i in graph_inputs:
        shape = [1 if not isinstance(d, int) else d for d in i.shape]
        integer = "int64" in i.type
        dtype = TensorProto.INT64 if integer else TensorProto.FLOAT
        inputs.append(helper.make_tensor_value_info(i.name, dtype, shape))
        outputs.append(helper.make_tensor_value_info(f"out_{i.name}", dtype, shape))
        nodes.append(helper.make_node("Neg", [i.name], [f"out_{i.name}"]))
        feeds[i.name] = np.zeros(shape, np.int64) if integer else np.ones(shape, np.float32)
    return _model(nodes, inputs, outputs), feeds


def relu_case(width: int) -> tuple[bytes, dict[str, np.ndarray]]:
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x" if i == 0 else f"r{i - 1}"], [f"r{i}"]) for i in range(LAYERS)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])
    y = helper.make_tensor_value_info(f"r{LAYERS - 1}", TensorProto.FLOAT, [1, width])
    return _model(nodes, [x], [y]), {"x": np.ones((1, width), np.float32)}


def conv_case(channels: int, kernel: int = 4) -> tuple[bytes, dict[str, np.ndarray]]:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((channels, 1, kernel)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "b")]
    nodes, inputs, outputs = [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 1])], []
    feeds = {"x": rng.standard_normal((1, channels, 1)).astype(np.float32)}
    for i in range(LAYERS):
        nodes.append(helper.make_node("CausalConvWithState", ["x", "w", "b", f"t{i}"], [f"y{i}", f"nt{i}"],
                                      domain="com.microsoft", activation="silu"))
        inputs.append(helper.make_tensor_value_info(f"t{i}", TensorProto.FLOAT, [1, channels, kernel - 1]))
        outputs += [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None),
                    helper.make_tensor_value_info(f"nt{i}", TensorProto.FLOAT, None)]
        feeds[f"t{i}"] = rng.standard_normal((1, channels, kernel - 1)).astype(np.float32)
    return _model(nodes, inputs, outputs, inits), feeds


def scan_case(key_heads: int = 1, heads: int = 24, dk: int = 128, dv: int = 64) -> tuple[bytes, dict]:
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    shapes = {"q": [1, 1, key_heads * dk], "k": [1, 1, key_heads * dk], "v": [1, 1, heads * dv],
              "decay": [1, 1, heads]}
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items()]
    feeds = {n: rng.random(s).astype(np.float32) for n, s in shapes.items()}
    feeds["decay"] = -feeds["decay"]
    nodes, outputs = [], []
    for i in range(LAYERS):
        nodes.append(helper.make_node("LinearAttention", ["q", "k", "v", f"s{i}", "decay"], [f"o{i}", f"ns{i}"],
                                      domain="com.microsoft", update_rule="gated", q_num_heads=key_heads,
                                      kv_num_heads=heads, scale=dk ** -0.5))
        inputs.append(helper.make_tensor_value_info(f"s{i}", TensorProto.FLOAT, [1, heads, dk, dv]))
        outputs += [helper.make_tensor_value_info(f"o{i}", TensorProto.FLOAT, None),
                    helper.make_tensor_value_info(f"ns{i}", TensorProto.FLOAT, None)]
        feeds[f"s{i}"] = rng.standard_normal((1, heads, dk, dv)).astype(np.float32)
    return _model(nodes, inputs, outputs), feeds


def p50_us(model: bytes, feeds: dict[str, np.ndarray], threads: int, calls: int) -> float:
    return median_ms(cpu_session(model, threads), feeds, calls, warmup=max(calls // 10, 5)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, required=True,
                        help="an artifact with an onnx-ort fp32 variant (its step's inputs make the io case)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ort_node_cost.json"))
    args = parser.parse_args()
    from seqedge.evaluate.run_info import run_metadata

    cases: dict[str, tuple[bytes, dict, int]] = {
        "io (the artifact's step inputs and outputs, one Neg each)": (*io_case(args.artifact), 2000),
        "relu_chain (24 Relu on [1, 1536])": (*relu_case(1536), 2000),
        "conv (24 CausalConvWithState, 576 channels: the bundled model's)": (*conv_case(576), 1000),
        "conv (24 CausalConvWithState, 1792 channels: Mamba2-130M's)": (*conv_case(1792), 1000),
        "scan (24 LinearAttention, Mamba2-130M's step)": (*scan_case(), 200),
    }
    rows: dict[str, Any] = {name: {"1": [], "2": []} for name in cases}
    for _ in range(args.rounds):
        for name, (model, feeds, calls) in cases.items():
            for threads in (1, 2):
                rows[name][str(threads)].append(p50_us(model, feeds, threads, calls))
    result = {"meta": run_metadata(artifact=str(args.artifact), rounds=args.rounds),
              "unit": "us per run, p50 of each round", "rounds": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name, by_threads in rows.items():
        print(f"{name}: " + "; ".join(f"{t} thread(s) {[round(v) for v in vs]}" for t, vs in by_threads.items()))


if __name__ == "__main__":
    main()
