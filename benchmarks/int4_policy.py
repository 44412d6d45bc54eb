"""Which weight matrices int4 should cover: parity of the bundled model per int4 module policy and group size.

    python benchmarks/int4_policy.py        -> benchmarks/results/int4_policy.{md,json}   (~15 s on 2 CPU cores)

For each policy (``QuantizationRecipe.int4_modules``) and group size, both int4 packings of the repo:
- ONNX: the onnx target's MatMulNBits (HQQ) graph of the ``chunk`` entry point, run by ONNX Runtime;
- ExecuTorch: the executorch target's torchao 8da4w model (``prepare_model``) run eagerly in torch; the lowered
  XNNPACK program matches it to ~1e-2 relative RMS (tests/test_executorch.py), it is not the program itself.
The 1,024-token parity stream runs as chunk calls only (state carried), against the float64 reference of the same
split. ``seqedge validate`` (prefill + steps, the real programs) gives the budgeted numbers of the default policy:
``parity_bundled.md``. Budget: top-1 >= 95%, bpb within 3%.

A second table compares, for the default policy, the onnx target's HQQ packing with onnxruntime's round-to-nearest
(symmetric, the quantizer's default) on the same MatMuls: parity, and the ``step`` latency in ONNX Runtime (batch 1,
default threads, p50 of 300 calls after 50 warm-up calls). HQQ writes float zero points into MatMulNBits, RTN
symmetric none; the latency column shows what that costs on this CPU.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from seqedge.runtimes.latency_report import cpu_model

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


def onnx_step_p50_ms(path: Path, model, calls: int = 300) -> float:
    import onnxruntime as ort

    from seqedge.runtimes.parity import text_tokens

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    state = [np.zeros(s.concrete_shape(1), np.float32) for s in model.state_specs]
    times = []
    for token in text_tokens(calls + 50):
        started = time.perf_counter()
        out = sess.run(None, dict(zip(names, [np.array([token], np.int64), *state])))
        times.append(time.perf_counter() - started)
        state = out[1:]
    return float(np.median(times[50:]) * 1e3)


def onnx_algorithms(model, root: Path, variants, tokens, reference) -> list[dict]:
    """fp32, the target's HQQ and onnxruntime's symmetric RTN on the default policy's MatMuls: parity + step p50."""
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    from seqedge.export.base import ExportContext
    from seqedge.export.onnx_target import OnnxTarget, matmul_modules
    from seqedge.export.quantization import QuantizationRecipe
    from seqedge.runtimes.parity import StreamResult, compare

    recipe = QuantizationRecipe("int4")
    hqq = OnnxTarget().export(ExportContext(model, root, recipe, variants=list(variants)))
    graphs = {"fp32 (no int4)": {e: root / "onnx" / "fp32" / f"{e}.onnx" for e in ("step", "chunk")},
              "HQQ asymmetric (the onnx target)": {e: root / hqq.files[e]["path"] for e in ("step", "chunk")},
              "RTN symmetric (onnxruntime default)": {}}
    for entry in ("step", "chunk"):
        proto = onnx.load(str(graphs["fp32 (no int4)"][entry]))
        kept = [n for n, m in matmul_modules(proto.graph, model).items() if not recipe.int4_applies(m[0])]
        config = nbits.DefaultWeightOnlyQuantConfig(block_size=recipe.group_size, is_symmetric=True,
                                                    op_types_to_quantize=("MatMul",))
        quantizer = nbits.MatMulNBitsQuantizer(proto, algo_config=config, nodes_to_exclude=kept)
        quantizer.process()
        graphs["RTN symmetric (onnxruntime default)"][entry] = root / f"rtn_{entry}.onnx"
        quantizer.model.save_model_to_file(str(root / f"rtn_{entry}.onnx"), False)
    rows = []
    for label, paths in graphs.items():
        logits = onnx_stream(paths["chunk"], model, tokens)
        report = compare(StreamResult(logits, reference.state), reference, tokens, prefill=len(tokens),
                         tag="fp32" if label.startswith("fp32") else "int4")
        rows.append({"algorithm": label, "top1": report.top1, "dbpb": report.bpb / report.bpb_reference - 1,
                     "passed": report.passed, "step_p50_ms": onnx_step_p50_ms(paths["step"], model),
                     "bytes": sum(p.stat().st_size for p in paths.values())})
        print(f"{label:40s} top-1 {rows[-1]['top1']:.2%} {rows[-1]['dbpb']:+.2%} step {rows[-1]['step_p50_ms']:.3f} "
              f"ms", flush=True)
    return rows


def eager_stream(model, tokens: np.ndarray) -> np.ndarray:
    C = model.config.chunk_size
    with torch.no_grad():
        state, logits = None, []
        for start in range(0, len(tokens), C):
            out, state = model(torch.as_tensor(tokens[None, start:start + C]), state)
            logits.append(out[0].double().numpy())
    return np.concatenate(logits)


def main() -> int:
    from seqedge.defaults import load_default
    from seqedge.export.api import export_model
    from seqedge.export.base import ExportContext
    from seqedge.export.executorch_target import prepare_model
    from seqedge.export.onnx_target import OnnxTarget
    from seqedge.export.quantization import QuantizationRecipe, int4_selection
    from seqedge.runtimes.parity import StreamResult, compare, reference_stream, text_tokens

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
                runs = {"onnx HQQ": onnx_stream(fp32.root / variant.files["chunk"]["path"], model, tokens)}
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
    write(rows, algorithms, model)
    return 0


def write(rows: list[dict], algorithms: list[dict], model) -> None:
    out = ROOT / "benchmarks" / "results"
    meta = {"command": "python benchmarks/int4_policy.py",
            "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            "machine": f"{cpu_model()}, {os.cpu_count()} cores",
            "versions": {p: version(p) for p in ("seqedge", "torch", "onnxruntime", "executorch", "torchao")},
            "tokens": TOKENS, "stream": "chunk calls only, state carried", "parameters": model.num_parameters()}
    (out / "int4_policy.json").write_text(json.dumps({**meta, "rows": rows, "onnx_algorithms": algorithms},
                                                     indent=2) + "\n")
    lines = ["# int4 module policy on the bundled model", "",
             f"- command: `{meta['command']}`; date (UTC): {meta['date_utc']}; machine: {meta['machine']}",
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
              "Same MatMuls (the MLP), group 32. Step: ONNX Runtime CPU, batch 1, default threads, p50 of 300 "
              "calls after 50 warm-up calls. HQQ's MatMulNBits carry float zero points; symmetric RTN has none.", "",
              "| algorithm | top-1 | bpb vs float64 | budget | step p50 ms | step + chunk bytes |",
              "|---|---|---|---|---|---|"]
    for r in algorithms:
        lines.append(f"| {r['algorithm']} | {r['top1']:.2%} | {r['dbpb']:+.2%} | "
                     f"{'met' if r['passed'] else 'missed'} | {r['step_p50_ms']:.3f} | {r['bytes']:,} |")
    (out / "int4_policy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
