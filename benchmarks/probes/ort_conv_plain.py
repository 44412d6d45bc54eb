"""ONNX Runtime's ``CausalConvWithState`` against the same one-token conv in plain ONNX ops.

The onnx-ort step runs each layer's short conv (K taps, carried tail, SiLU) as one ``CausalConvWithState`` node,
whose cost ``ort_node_cost.py`` measures. The plain form for one token:
Concat(tail, x) -> Mul by the taps -> ReduceSum -> Sigmoid, Mul (SiLU), and Slice for the new tail; the ``conv``
form takes ONNX's depthwise ``Conv`` (group = channels) for the Mul and ReduceSum. Timed two ways:

- isolated: 24 convs chained in one graph, per conv, at the bundled model's and Mamba2-130M's channel counts
  (all three forms);
- in the step (``--artifact``): the onnx-ort step graph of an artifact with its convs rewritten to the plain form,
  against the graph as exported (same feeds, outputs compared), p50 of alternating rounds.

    python benchmarks/probes/ort_conv_plain.py [--artifact ART] [--out benchmarks/results/ort_conv_plain.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from ort_timing import cpu_session, random_feeds, time_rounds

from seqedge.artifact import read_manifest
from seqedge.evaluate.run_info import run_metadata

CHANNELS = {"bundled model": 576, "Mamba2-130M": 1792}
KERNEL = 4
CHAIN = 24


def plain_conv_nodes(x: str, tail: str, taps: str, y: str, new_tail: str, prefix: str, consts: dict[str, str],
                     bias: str | None = None, groups: int = 0) -> list[onnx.NodeProto]:
    """The one-token conv of ``x`` ``[B, C, 1]`` with ``tail`` ``[B, C, K-1]`` and ``taps`` ``[C, K]`` (``[C, 1, K]``
    with ``groups`` = C: one depthwise ``Conv`` node): SiLU(y) and the new tail, in plain ops (``consts``: names of
    the int64 constants axis 2, 1 and K)."""
    total = f"{prefix}_sum"
    nodes = [helper.make_node("Concat", [tail, x], [f"{prefix}_xc"], axis=2)]
    if groups:
        nodes.append(helper.make_node("Conv", [f"{prefix}_xc", taps], [total], group=groups))
    else:
        nodes += [helper.make_node("Mul", [f"{prefix}_xc", taps], [f"{prefix}_prod"]),
                  helper.make_node("ReduceSum", [f"{prefix}_prod", consts["axis"]], [total], keepdims=1)]
    if bias is not None:
        nodes.append(helper.make_node("Add", [total, bias], [f"{prefix}_biased"]))
        total = f"{prefix}_biased"
    return nodes + [helper.make_node("Sigmoid", [total], [f"{prefix}_gate"]),
                    helper.make_node("Mul", [total, f"{prefix}_gate"], [y]),
                    helper.make_node("Slice", [f"{prefix}_xc", consts["one"], consts["k"], consts["axis"]],
                                     [new_tail])]


def constants(kernel: int) -> tuple[dict[str, str], list[onnx.TensorProto]]:
    names = {"axis": "conv_axis", "one": "conv_one", "k": "conv_k"}
    values = {"axis": 2, "one": 1, "k": kernel}
    return names, [numpy_helper.from_array(np.array([values[k]], np.int64), names[k]) for k in names]


def chain_model(channels: int, kind: str) -> bytes:
    """CHAIN convs (``kind``: fused, plain or conv), each reading the previous one's output and a tail input of its
    own."""
    plain = kind != "fused"
    rng = np.random.default_rng(0)
    consts, inits = constants(KERNEL)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 1])]
    outputs, nodes, x = [], [], "x"
    for i in range(CHAIN):
        taps = rng.standard_normal((channels, 1, KERNEL)).astype(np.float32)
        tail, y, new_tail = f"tail{i}", f"y{i}", f"new_tail{i}"
        inputs.append(helper.make_tensor_value_info(tail, TensorProto.FLOAT, [1, channels, KERNEL - 1]))
        outputs.append(helper.make_tensor_value_info(new_tail, TensorProto.FLOAT, None))
        if plain:
            inits.append(numpy_helper.from_array(taps if kind == "conv" else taps[:, 0], f"taps{i}"))
            nodes += plain_conv_nodes(x, tail, f"taps{i}", y, new_tail, f"conv{i}", consts,
                                      groups=channels if kind == "conv" else 0)
        else:
            inits += [numpy_helper.from_array(taps, f"taps{i}"),
                      numpy_helper.from_array(np.zeros(channels, np.float32), f"bias{i}")]
            nodes.append(helper.make_node("CausalConvWithState", [x, f"taps{i}", f"bias{i}", tail], [y, new_tail],
                                          domain="com.microsoft", activation="silu"))
        x = y
    outputs.insert(0, helper.make_tensor_value_info(x, TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "conv_chain", inputs, outputs, inits if plain else inits[3:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    return model.SerializeToString()


def rewrite_step(path: Path, out: Path) -> int:
    """``path``'s step graph with every CausalConvWithState in plain ops, saved to ``out``; the convs rewritten."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    consts, extra = constants(KERNEL)
    nodes, count = [], 0
    for node in model.graph.node:
        if node.op_type != "CausalConvWithState":
            nodes.append(node)
            continue
        x, weight, bias, tail = node.input
        taps = numpy_helper.to_array(inits[weight])[:, 0]                               # [C, K]
        if taps.shape[1] != KERNEL:
            raise ValueError(f"{node.name}: kernel {taps.shape[1]}, this probe builds K={KERNEL}")
        prefix = f"plain_conv{count}"
        extra.append(numpy_helper.from_array(np.ascontiguousarray(taps), f"{prefix}_taps"))
        bias_name = None
        values = numpy_helper.to_array(inits[bias]) if bias in inits else None
        if values is not None and np.any(values):
            bias_name = f"{prefix}_bias"
            extra.append(numpy_helper.from_array(values.reshape(-1, 1), bias_name))
        nodes += plain_conv_nodes(x, tail, f"{prefix}_taps", node.output[0], node.output[1], prefix, consts,
                                  bias_name)
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(extra)
    onnx.save(model, str(out), save_as_external_data=True, location=out.name + ".data")
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, help="also time an artifact's onnx-ort int8 step both ways")
    parser.add_argument("--quantization", default="int8", help="the onnx-ort variant (default: %(default)s)")
    parser.add_argument("--calls", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ort_conv_plain.json"))
    args = parser.parse_args()
    result = {"meta": run_metadata(calls=args.calls, rounds=args.rounds, artifact=str(args.artifact)),
              "unit": "us, p50 of each round", "isolated_per_conv": {}}
    for name, channels in CHANNELS.items():
        sessions = {kind: cpu_session(chain_model(channels, kind), 1) for kind in ("fused", "plain", "conv")}
        feeds = random_feeds(sessions["fused"], 1)
        outs = {kind: s.run(None, feeds) for kind, s in sessions.items()}
        diff = {kind: max(float(np.abs(a - b).max()) for a, b in zip(outs["fused"], outs[kind]))
                for kind in ("plain", "conv")}
        times = time_rounds(sessions, feeds, args.calls, args.rounds)
        result["isolated_per_conv"][f"{name} ({channels} channels)"] = {
            "max_abs_diff": diff["plain"], "max_abs_diff_conv": diff["conv"],
            **{k: [round(v * 1e3 / CHAIN, 2) for v in t] for k, t in times.items()}}
        print(name, result["isolated_per_conv"][f"{name} ({channels} channels)"], flush=True)
    if args.artifact is not None:
        manifest = read_manifest(args.artifact)
        path = manifest.path(manifest.variant("onnx-ort", args.quantization), "step")
        with tempfile.TemporaryDirectory() as tmp:
            plain_path = Path(tmp) / "step_plain.onnx"
            convs = rewrite_step(path, plain_path)
            sessions = {"fused": cpu_session(path, 1), "plain": cpu_session(plain_path, 1)}
            feeds = random_feeds(sessions["fused"], 0, vocab=manifest.vocab_size)
            diff = max(float(np.abs(a - b).max()) for a, b in zip(*(s.run(None, feeds) for s in sessions.values())))
            times = time_rounds(sessions, feeds, args.calls, args.rounds)
        result["step"] = {"variant": f"onnx-ort/{args.quantization}", "convs": convs, "max_abs_diff": diff,
                          **{k: [round(v * 1e3, 1) for v in t] for k, t in times.items()}}
        print("step", result["step"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
