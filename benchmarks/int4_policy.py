"""Which weight matrices int4 should cover: parity of the bundled model per int4 module policy and group size.

    python benchmarks/int4_policy.py [--out DIR]   -> benchmarks/results/int4_policy.{md,json} (or DIR)

For each policy (``QuantizationRecipe.int4_modules``) and group size, both int4 packings of the repo:
- ONNX: the onnx target's MatMulNBits graph (``int4_blockwise.search``: asymmetric, uint8 zero points) of the
  ``chunk`` entry point, run by ONNX Runtime;
- ExecuTorch: the executorch target's torchao 8da4w model (``prepare_model``) run eagerly in torch; the lowered
  XNNPACK program matches it to ~1e-2 relative RMS (tests/test_executorch.py), it is not the program itself.
The 1,024-token parity stream runs as chunk calls only (state carried), against the float64 reference of the same
split. ``seqedge validate`` (prefill + steps, the real programs) gives the budgeted numbers of the default policy:
``parity_bundled.md``. Budget: top-1 >= 95%, bpb within 3%.

A second table compares, for the default policy, ways to fill the same MatMulNBits nodes: the onnx target's
(``int4_blockwise.search``), HQQ (float zero points), HQQ with its zero points rounded to
uint8, and onnxruntime's round-to-nearest (symmetric, its default, and asymmetric), some also with
``accuracy_level=4`` (int8 activations in the CPU kernel): parity, and the ``step`` and ``chunk`` latency in ONNX
Runtime (batch 1, default threads; per round, p50 of 300 steps after 50 warm-up and of 20 chunks after 3; the
table gives the median of ``ROUNDS`` rounds, each timing the variants in a new random order, so that a busy CPU
slows them alike).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from seqedge.evaluate.run_info import run_metadata

ROOT = Path(__file__).resolve().parents[1]
TOKENS = 1024
POLICIES = {
    "every matrix (linears + tied head)": ("*",),
    "every linear (head float)": ("blocks.*",),
    "attention projections only": ("blocks.*.attn.*",),
    "MLP (the default)": ("blocks.*.mlp.gate_up", "blocks.*.mlp.down"),
    "MLP down only": ("blocks.*.mlp.down",),
}
GROUPS = (32, 64)
ROUNDS = 7                   # latency rounds of the packing table
ONNX_PACKING = "onnx (the target's MatMulNBits)"


def onnx_stream(path: Path, model, tokens: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    C = model.config.chunk_size
    state = [np.zeros(s.concrete_shape(1), np.float32) for s in model.state_specs]
    names = [i.name for i in sess.get_inputs()]
    logits = []
    for start in range(0, len(tokens), C):
        out = sess.run(None, dict(zip(names, [tokens[None, start:start + C], *state])))
        logits.append(out[0][0])
        state = out[1:]
    return np.concatenate(logits).astype(np.float64)


def _sessions(paths: dict[str, Path]) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return {k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for k, p in paths.items()}


def _p50_ms(sess, model, tokens: np.ndarray, length: int, warmup: int) -> float:
    """p50 of ``sess.run`` over ``tokens`` fed ``length`` at a time (state carried), after ``warmup`` calls."""
    names = [i.name for i in sess.get_inputs()]
    state = [np.zeros(s.concrete_shape(1), np.float32) for s in model.state_specs]
    times = []
    for start in range(0, len(tokens) - length + 1, length):
        started = time.perf_counter()
        feed = tokens[start:start + 1] if length == 1 else tokens[None, start:start + length]   # [1] / [1, C]
        out = sess.run(None, dict(zip(names, [feed, *state])))
        times.append(time.perf_counter() - started)
        state = out[1:]
    return float(np.median(times[warmup:]) * 1e3)


def _ort_quantize(source: Path, dest: Path, config, model, recipe) -> Path:
    """onnxruntime's MatMulNBitsQuantizer with ``config`` on the MatMuls the recipe's int4 policy selects."""
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    from seqedge.export.onnx_target import matmul_modules

    logging.getLogger(nbits.__name__).setLevel(logging.WARNING)
    proto = onnx.load(str(source))
    kept = [n for n, m in matmul_modules(proto.graph, model).items() if not recipe.int4_applies(m[0])]
    quantizer = nbits.MatMulNBitsQuantizer(proto, algo_config=config, nodes_to_exclude=kept)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dest), False)
    return dest


def _with_accuracy_level(source: Path, dest: Path, level: int) -> Path:
    """The same graph with ``accuracy_level=level`` on every MatMulNBits (same weights)."""
    import onnx

    proto = onnx.load(str(source))
    for node in proto.graph.node:
        if node.op_type == "MatMulNBits":
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", level))
    onnx.save(proto, str(dest))
    return dest


def _hqq_rounded(hqq: Path, fp32: Path, dest: Path, group: int) -> Path:
    """HQQ's graph with its float zero points rounded to integers (0..15), stored as packed uint8 like RTN's, and
    the codes re-rounded for them with HQQ's scales (``int4_blockwise.pack``)."""
    import onnx
    from onnx import numpy_helper

    from seqedge.export import int4_blockwise

    proto, source = onnx.load(str(hqq)), onnx.load(str(fp32)).graph
    constants = {t.name: t for t in source.initializer}
    weights = {n.name + "_Q4": numpy_helper.to_array(constants[n.input[1]])
               for n in source.node if n.op_type == "MatMul" and n.input[1] in constants}
    inits = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "MatMulNBits":
            w = weights[node.name]
            kb = -(-w.shape[0] // group)
            scale = numpy_helper.to_array(inits[node.input[2]]).reshape(w.shape[1], kb)
            zero = np.clip(np.rint(numpy_helper.to_array(inits[node.input[3]]).reshape(w.shape[1], kb)), 0, 15)
            for name, array in zip(node.input[1:4], int4_blockwise.pack(w, scale, zero, group)):
                inits[name].CopyFrom(numpy_helper.from_array(array, name))
    onnx.save(proto, str(dest))
    return dest


def onnx_algorithms(model, root: Path, variants, tokens, reference) -> list[dict]:
    """Ways to fill the default policy's MatMulNBits (see the module doc): parity + step/chunk p50, interleaved."""
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    from seqedge.evaluate.parity import StreamResult, compare, text_tokens
    from seqedge.export.base import ExportContext
    from seqedge.export.onnx_target import OnnxTarget
    from seqedge.export.quantization import QuantizationRecipe

    entries = ("step", "chunk")
    fp32 = {e: root / "onnx" / "fp32" / f"{e}.onnx" for e in entries}
    graphs = {("fp32 (no int4)", "-", "-", "-"): fp32}
    for group in (32, 64):
        target = OnnxTarget().export(ExportContext(model, root, QuantizationRecipe("int4", group),
                                                   variants=list(variants)))
        graphs[("int4_blockwise.search (the onnx target)", group, "uint8", "-")] = {
            e: Path(shutil.copy(root / target.files[e]["path"], root / f"search{group}_{e}.onnx")) for e in entries}
    search = graphs[("int4_blockwise.search (the onnx target)", 32, "uint8", "-")]
    graphs[("int4_blockwise.search", 32, "uint8", 4)] = {
        e: _with_accuracy_level(search[e], root / f"search32_acc4_{e}.onnx", 4) for e in entries}
    recipe = QuantizationRecipe("int4")
    configs = {("HQQ (float zero points)", 32, "float", "-"):
               nbits.HQQWeightOnlyQuantConfig(block_size=32, bits=4, op_types_to_quantize=("MatMul",))}
    for sym, acc, groups in ((True, None, (32,)), (True, 4, (32,)), (False, None, (32, 64, 128)), (False, 4, (32,))):
        for group in groups:
            label = "RTN symmetric (onnxruntime default)" if sym else "RTN asymmetric"
            configs[(label, group, "none (8)" if sym else "uint8", acc or "-")] = nbits.DefaultWeightOnlyQuantConfig(
                block_size=group, is_symmetric=sym, accuracy_level=acc, op_types_to_quantize=("MatMul",))
    for i, (key, config) in enumerate(configs.items()):
        graphs[key] = {e: _ort_quantize(fp32[e], root / f"ort{i}_{e}.onnx", config, model, recipe) for e in entries}
        if i == 0:
            graphs[("HQQ, zero points rounded to uint8", 32, "uint8", "-")] = {
                e: _hqq_rounded(graphs[key][e], fp32[e], root / f"hqq_rounded_{e}.onnx", 32) for e in entries}
    rows = []
    for (label, group, zero, acc), paths in graphs.items():
        logits = onnx_stream(paths["chunk"], model, tokens)
        report = compare(StreamResult(logits, reference.state), reference, tokens, prefill=len(tokens),
                         tag="fp32" if label.startswith("fp32") else "int4")
        nodes = [n for n in onnx.load(str(paths["step"])).graph.node if n.op_type == "MatMulNBits"]
        rows.append({"algorithm": label, "group_size": group, "zero_points": zero, "accuracy_level": acc,
                     "matmulnbits_nodes": len(nodes), "top1": report.top1, "kl": report.kl,
                     "dbpb": report.bpb / report.bpb_reference - 1, "passed": report.passed,
                     "bytes": sum(p.stat().st_size for p in paths.values())})
    step_sessions = _sessions({i: g["step"] for i, g in enumerate(graphs.values())})
    chunk_sessions = _sessions({i: g["chunk"] for i, g in enumerate(graphs.values())})
    C = model.config.chunk_size
    step_tokens, chunk_tokens = text_tokens(350), text_tokens(23 * C)
    times = {i: {"step": [], "chunk": []} for i in step_sessions}
    load = {"before": os.getloadavg()[0]}
    order = np.random.default_rng(0)
    for _ in range(ROUNDS):
        for i in order.permutation(len(times)).tolist():
            times[i]["step"].append(_p50_ms(step_sessions[i], model, step_tokens, 1, 50))
            times[i]["chunk"].append(_p50_ms(chunk_sessions[i], model, chunk_tokens, C, 3))
    load["after"] = os.getloadavg()[0]
    for i, row in enumerate(rows):
        row["load_average_1min"] = load
        row.update({f"{k}_p50_ms": float(np.median(v)) for k, v in times[i].items()},
                   **{f"{k}_p50_ms_rounds": v for k, v in times[i].items()})
        print(f"{row['algorithm'][:40]:40s} g{row['group_size']!s:3s} acc {row['accuracy_level']!s:2s} top-1 "
              f"{row['top1']:.2%} {row['dbpb']:+.2%} kl {row['kl']:.4f} step {row['step_p50_ms']:.3f} ms chunk "
              f"{row['chunk_p50_ms']:.2f} ms", flush=True)
    return rows


def eager_stream(model, tokens: np.ndarray) -> np.ndarray:
    C = model.config.chunk_size
    with torch.no_grad():
        state, logits = None, []
        for start in range(0, len(tokens), C):
            out, state = model(torch.as_tensor(tokens[None, start:start + C]), state)
            logits.append(out[0].double().numpy())
    return np.concatenate(logits)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                        help="folder for int4_policy.{md,json} (default: benchmarks/results)")
    args = parser.parse_args(argv)
    from seqedge.defaults import load_default
    from seqedge.evaluate.parity import StreamResult, compare, reference_stream, text_tokens
    from seqedge.export.api import export_model
    from seqedge.export.base import ExportContext
    from seqedge.export.executorch_target import prepare_model
    from seqedge.export.onnx_target import OnnxTarget
    from seqedge.export.quantization import QuantizationRecipe, int4_selection

    torch.set_num_threads(2)
    model = load_default().float().eval()
    tokens = text_tokens(TOKENS)
    assert TOKENS % model.config.chunk_size == 0
    reference = reference_stream(model, tokens, TOKENS)
    total = sum(w.numel() for w in model.parameters())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_model(model, Path(tmp) / "art", ["onnx"], ["none"], progress=False)
        for label, patterns in POLICIES.items():
            for group in GROUPS:
                recipe = QuantizationRecipe("int4", group, patterns)
                selected, _ = int4_selection(model, recipe)
                share = sum(dict(model.named_parameters())[f"{n}.weight"].numel() for n in selected) / total
                started = time.perf_counter()
                ctx = ExportContext(model, fp32.root, recipe, variants=list(fp32.variants))
                variant = OnnxTarget().export(ctx)
                runs = {ONNX_PACKING: onnx_stream(fp32.root / variant.files["chunk"]["path"], model, tokens)}
                eager, info = prepare_model(model, recipe)
                runs["executorch 8da4w (torchao eager)"] = eager_stream(eager, tokens)
                for packing, logits in runs.items():
                    report = compare(StreamResult(logits, reference.state), reference, tokens, prefill=TOKENS,
                                     tag="int4")
                    rows.append({"policy": label, "patterns": list(patterns), "group_size": group,
                                 "packing": packing, "weight_share": share, "top1": report.top1,
                                 "bpb": report.bpb, "bpb_reference": report.bpb_reference,
                                 "dbpb": report.bpb / report.bpb_reference - 1, "passed": report.passed,
                                 "int4_modules": variant.info["int4"]["quantized_modules"] if packing.startswith(
                                     "onnx") else info["quantized_modules"]})
                print(f"{label:36s} g{group:<3d} {time.perf_counter() - started:5.1f}s "
                      + "  ".join(f"{r['packing'][:10]} {r['top1']:.2%} {r['dbpb']:+.2%}" for r in rows[-2:]),
                      flush=True)
        algorithms = onnx_algorithms(model, fp32.root, fp32.variants, tokens, reference)
    write(rows, algorithms, model, args.out)
    return 0


def write(rows: list[dict], algorithms: list[dict], model, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    default = out.resolve() == (ROOT / "benchmarks" / "results").resolve()
    run = run_metadata()
    meta = {"command": "python benchmarks/int4_policy.py" + ("" if default else f" --out {out}"),
            "date_utc": run["date"], "commit": run["commit"],
            "machine": f"{run['machine']['cpu']}, {run['machine']['cores']} cores",
            "versions": {p: version(p) for p in ("seqedge", "torch", "onnxruntime", "executorch", "torchao")},
            "tokens": TOKENS, "stream": "chunk calls only, state carried", "parameters": model.num_parameters()}
    (out / "int4_policy.json").write_text(json.dumps({**meta, "rows": rows, "onnx_algorithms": algorithms},
                                                     indent=2) + "\n")
    lines = ["# int4 module policy on the bundled model", "",
             f"- command: `{meta['command']}`; date (UTC): {meta['date_utc']}; commit: {meta['commit']}; "
             f"machine: {meta['machine']}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
             f"- {TOKENS} tokens of the parity stream as chunk calls against float64; budget top-1 >= 95%, bpb "
             "within 3%. ExecuTorch rows: torchao's eager 8da4w model (what the program lowers), not the "
             "XNNPACK program; `parity_bundled.md` has `seqedge validate` on the real programs.",
             "- weight share: the int4 matrices' share of all parameters (the tied embedding/head is 259 x 192). "
             "ExecuTorch packs `nn.Linear`s only, so its 'every matrix' rows keep the head float; ONNX pads a "
             "matrix narrower than the group, ExecuTorch keeps it float (the JSON lists each row's modules)",
             "", "| policy | group | packing | weight share | top-1 | bpb vs float64 | budget |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['policy']} | {r['group_size']} | {r['packing']} | {r['weight_share']:.0%} | "
                     f"{r['top1']:.2%} | {r['dbpb']:+.2%} | {'met' if r['passed'] else 'missed'} |")
    lines += ["", "## ONNX int4 packing of the default policy (MLP): parity and step latency", "",
              "The same MatMuls (the MLP) as MatMulNBits, filled different ways; fp32 is the float graph. Parity as "
              "above (KL: mean KL divergence from the float64 reference, nats per token). Latency: ONNX Runtime CPU, "
              f"batch 1, default threads; per round the p50 of 300 steps (after 50) and of 20 {model.config.chunk_size}"
              f"-token chunks (after 3); the median of {ROUNDS} rounds, each timing the variants in a new random "
              "order. Zero points: "
              "uint8 (integer, packed two a byte) keep MatMulNBits on ONNX Runtime's fast CPU kernels, HQQ's float "
              "ones do not; symmetric RTN stores none (8 implied). accuracy_level 4: int8 activations in the kernel "
              "('-': unset, float32). The CPU is shared: the 1-minute load average was "
              f"{algorithms[0]['load_average_1min']['before']:.2f} before the timings and "
              f"{algorithms[0]['load_average_1min']['after']:.2f} after (2 cores); the ratios to fp32 of the same "
              "run carry over better than the absolute times.", "",
              "| algorithm | group | zero points | accuracy_level | top-1 | bpb vs float64 | KL | budget | "
              "step p50 ms | step / fp32 | chunk p50 ms | chunk / fp32 | step + chunk bytes |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = algorithms[0]
    for r in algorithms:
        lines.append(f"| {r['algorithm']} | {r['group_size']} | {r['zero_points']} | {r['accuracy_level']} | "
                     f"{r['top1']:.2%} | {r['dbpb']:+.2%} | {r['kl']:.4f} | {'met' if r['passed'] else 'missed'} | "
                     f"{r['step_p50_ms']:.3f} | {r['step_p50_ms'] / base['step_p50_ms']:.2f} | "
                     f"{r['chunk_p50_ms']:.2f} | {r['chunk_p50_ms'] / base['chunk_p50_ms']:.2f} | {r['bytes']:,} |")
    (out / "int4_policy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
