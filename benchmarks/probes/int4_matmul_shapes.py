"""One-token MatMulNBits (4 bits) on Mamba2-130M's matrices: which packing runs the decode step fastest.

Per packing (block size, zero points or none, accuracy_level), one ONNX graph holds the step's matrices in a chain
like the model's: per layer ``in_proj`` (768 -> 3352) and ``out_proj`` (1536 -> 768), 24 layers, then the head
(768 -> 50288). Weights are random bytes (the kernels' speed does not depend on the values). The graphs are timed
in alternating rounds with the shared helper; the float32 MatMul chain is the yardstick.

Usage: ``python benchmarks/probes/int4_matmul_shapes.py [--threads 2] [--rounds 7] [--out FILE]`` (default:
benchmarks/results/int4_matmul_shapes.json)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ort_timing import cpu_session, time_rounds  # noqa: E402

from seqedge.evaluate.run_info import run_metadata  # noqa: E402

D, INNER, IN_PROJ, VOCAB, LAYERS = 768, 1536, 3352, 50288, 24


def _nbits(name: str, x: str, k: int, n: int, block: int, zero_points: bool, level: int | None, rng,
           inits: list) -> onnx.NodeProto:
    blocks = -(-k // block)
    inits.append(numpy_helper.from_array(rng.integers(0, 256, (n, blocks, block // 2), dtype=np.uint8), name + "_w"))
    inits.append(numpy_helper.from_array((rng.random(n * blocks, dtype=np.float32) * 0.01), name + "_s"))
    inputs = [x, name + "_w", name + "_s"]
    if zero_points:
        inits.append(numpy_helper.from_array(rng.integers(0, 256, n * -(-blocks // 2), dtype=np.uint8), name + "_z"))
        inputs.append(name + "_z")
    attrs = dict(K=k, N=n, bits=4, block_size=block)
    if level is not None:
        attrs["accuracy_level"] = level
    return helper.make_node("MatMulNBits", inputs, [name], domain="com.microsoft", **attrs)


def _matmul(name: str, x: str, k: int, n: int, rng, inits: list) -> onnx.NodeProto:
    inits.append(numpy_helper.from_array((rng.standard_normal((k, n)) * 0.02).astype(np.float32), name + "_w"))
    return helper.make_node("MatMul", [x, name + "_w"], [name])


def chain(packing: dict | None, tokens: int = 1, seed: int = 0) -> onnx.ModelProto:
    """The step's matrices as one graph over ``tokens`` rows (1: a step; a chunk's length: prefill);
    ``packing`` None: float32 MatMuls."""
    rng = np.random.default_rng(seed)
    inits: list = []
    nodes = []

    def mm(name, x, k, n):
        node = (_matmul(name, x, k, n, rng, inits) if packing is None
                else _nbits(name, x, k, n, rng=rng, inits=inits, **packing))
        nodes.append(node)
        return name

    x = "x"
    for i in range(LAYERS):
        h = mm(f"in{i}", x, D, IN_PROJ)
        nodes.append(helper.make_node("Slice", [h, "lo", "hi", "ax"], [f"sl{i}"]))
        o = mm(f"out{i}", f"sl{i}", INNER, D)
        nodes.append(helper.make_node("Add", [x, o], [f"res{i}"]))
        x = f"res{i}"
    mm("head", x, D, VOCAB)
    inits += [numpy_helper.from_array(np.array([0], np.int64), "lo"),
              numpy_helper.from_array(np.array([INNER], np.int64), "hi"),
              numpy_helper.from_array(np.array([1], np.int64), "ax")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [tokens, D])],
                              [helper.make_tensor_value_info("head", TensorProto.FLOAT, [tokens, VOCAB])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                   helper.make_opsetid("com.microsoft", 1)])


PACKINGS = {
    "fp32 MatMul": None,
    "b32 zp level4 (the onnx target's step)": dict(block=32, zero_points=True, level=4),
    "b32 sym level4": dict(block=32, zero_points=False, level=4),
    "b64 zp level4": dict(block=64, zero_points=True, level=4),
    "b64 sym level4": dict(block=64, zero_points=False, level=4),
    "b128 sym level4": dict(block=128, zero_points=False, level=4),
    "b32 zp float": dict(block=32, zero_points=True, level=None),
    "b32 sym float": dict(block=32, zero_points=False, level=None),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=30)
    p.add_argument("--only", help="comma list of packing names (default: all)")
    p.add_argument("--tokens", type=int, default=1, help="rows per call: 1 (a step) or a chunk's length")
    p.add_argument("--out", type=Path,
                   default=Path(__file__).resolve().parents[1] / "results" / "int4_matmul_shapes.json")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(PACKINGS)
    sessions = {n: cpu_session(chain(PACKINGS[n], args.tokens).SerializeToString(), args.threads) for n in names}
    feeds = {"x": (np.random.default_rng(1).standard_normal((args.tokens, D)) * 0.1).astype(np.float32)}
    times = time_rounds(sessions, feeds, args.calls, args.rounds)
    rows = {n: float(np.median(v)) for n, v in times.items()}
    for n, ms in rows.items():
        print(f"{n:45s} {ms:8.3f} ms")
    result = {"meta": run_metadata(threads=args.threads, rounds=args.rounds, calls=args.calls, tokens=args.tokens,
                                   shapes={"in_proj": [D, IN_PROJ], "out_proj": [INNER, D], "head": [D, VOCAB],
                                           "layers": LAYERS}),
              "packings": {n: {"packing": PACKINGS[n], "p50_ms_by_round": times[n], "p50_ms": rows[n]}
                           for n in names}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
