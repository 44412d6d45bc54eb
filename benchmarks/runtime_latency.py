"""Per-token latency of every runtime on the bundled model on this machine, against a KV-cache transformer.

One command measures, with one token stream (Python standard-library source bytes) and one harness
(seqedge.evaluate.latency):

- the torch eager step (``SequentialAttentionModel.step``; the reference of the speed-up targets);
- every runtime/quantization of the exported artifact that runs here (torch, onnxruntime, executorch, ...);
- the matched softmax-attention transformer with a growing KV cache in ONNX Runtime (benchmarks/transformer_kv_onnx.py);

and checks the targets: per-token p50 at the longest context / at context 0 <= 1.10 for every Sequential
Attention row; ONNX Runtime (both graph flavours: portable and fused) and ExecuTorch steps >= 3x faster than the
torch eager step (p50 at context 0); prefill tokens/s >= 10x token-by-token. A missed target is reported with by how much. It also tabulates the
artifact size per target and quantization. Results: benchmarks/results/runtime_latency.{json,md,png}.

    python benchmarks/runtime_latency.py            # the recorded run (contexts 0,1k,16k,64k; several minutes)
    python benchmarks/runtime_latency.py --quick    # smoke test: small contexts, few steps, results to a temp dir
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transformer_kv_onnx import KVCacheStepper, build_baseline  # noqa: E402

from seqedge.evaluate.latency import (  # noqa: E402
    BenchConfig,
    RunResult,
    bench_artifact,
    bench_stepper,
    format_context,
    parse_contexts,
    progress_bar,
    token_stream,
    total_tokens,
)
from seqedge.evaluate.latency_report import BenchReport, write_report  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FLAT_MAX = 1.10          # p50 at the longest context / p50 at context 0
STEP_SPEEDUP_MIN = 3.0   # onnxruntime and executorch step vs the torch eager step
PREFILL_SPEEDUP_MIN = 10.0
FULL = dict(contexts="0,1k,16k,64k", steps=100, warmup=5, prefill_tokens=4096, stepwise_tokens=256, ttft_prompt=128,
            sweeps=2)      # two passes over the contexts: a load spike from another process on 2 cores is not a trend
QUICK = dict(contexts="0,1k", steps=20, warmup=2, prefill_tokens=512, stepwise_tokens=64, ttft_prompt=32)


class TorchEagerStepper:
    """``SequentialAttentionModel.step`` / ``forward`` in eager PyTorch (float32): the speed-up reference."""

    def __init__(self, model: Any) -> None:
        self.model = model.eval()
        self.name = "torch-eager/fp32"
        self.reset()

    def reset(self) -> None:
        self.state = self.model.init_state(1)

    @torch.inference_mode()
    def prefill(self, tokens: np.ndarray) -> np.ndarray | None:
        if len(tokens) == 0:
            return None
        logits, self.state = self.model(torch.from_numpy(np.asarray(tokens, np.int64))[None], self.state)
        return logits[0, -1].numpy()

    @torch.inference_mode()
    def step(self, token: int) -> np.ndarray:
        logits, self.state = self.model.step(torch.tensor([token]), self.state)
        return logits[0].numpy()

    def memory_bytes(self) -> int:
        return int(sum(t.numel() * t.element_size() for t in self.state.tensors))

    def describe(self) -> dict[str, Any]:
        return {"runtime": "torch eager (SequentialAttentionModel.step)", "torch": torch.__version__,
                "threads": torch.get_num_threads()}


def export_artifact(checkpoint: str | None, out: Path, targets: list[str], quantize: list[str]) -> Path:
    """``seqedge export`` (the CLI, as a user runs it) into ``out``; fails loudly with its message."""
    cmd = [sys.executable, "-m", "seqedge.cli.main", "export", *(["-m", checkpoint] if checkpoint else []),
           "--target", ",".join(targets), "--quantize", ",".join(quantize), "-o", str(out)]
    print("$ " + " ".join(cmd[2:]), file=sys.stderr)
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(f"export failed: {' '.join(cmd[2:])}")
    return out


def _verdict(ok: bool, missed: str) -> str:
    return "met" if ok else f"**missed** ({missed})"


def evaluate_targets(results: list[RunResult]) -> list[dict[str, Any]]:
    """One row per (check, run): value, target, met or by how much it was missed."""
    rows = []
    ours = [r for r in results if r.kind == "seqedge"]
    eager = next((r for r in results if r.name.startswith("torch-eager")), None)
    for r in ours:
        lo, hi = r.contexts[0], r.contexts[-1]
        rows.append({"check": f"p50 @{format_context(hi.context)} / p50 @{format_context(lo.context)}",
                     "run": r.name, "value": r.flatness, "target": f"<= {FLAT_MAX:.2f}", "met": r.flatness <= FLAT_MAX,
                     "missed_by": f"{(r.flatness / FLAT_MAX - 1) * 100:.0f}% above"})
    for r in ours:
        if eager is None or not r.name.startswith(("onnxruntime/", "onnxruntime-fused/", "executorch/")):
            continue
        speedup = eager.contexts[0].p50_ms / r.contexts[0].p50_ms
        rows.append({"check": "step speed-up vs torch eager (p50 @0)", "run": r.name, "value": speedup,
                     "target": f">= {STEP_SPEEDUP_MIN:.0f}x", "met": speedup >= STEP_SPEEDUP_MIN,
                     "missed_by": f"{(1 - speedup / STEP_SPEEDUP_MIN) * 100:.0f}% short"})
    for r in ours:
        if r.prefill_speedup is None:
            continue
        rows.append({"check": "prefill tok/s / token-by-token tok/s", "run": r.name, "value": r.prefill_speedup,
                     "target": f">= {PREFILL_SPEEDUP_MIN:.0f}x", "met": r.prefill_speedup >= PREFILL_SPEEDUP_MIN,
                     "missed_by": f"{(1 - r.prefill_speedup / PREFILL_SPEEDUP_MIN) * 100:.0f}% short"})
    return rows


def targets_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["## Targets", "", "| check | run | value | target | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {r['check']} | {r['run']} | {r['value']:.2f} | {r['target']} | {_verdict(r['met'], r['missed_by'])} |"
              for r in rows]
    missed = sum(not r["met"] for r in rows)
    lines += ["", f"{len(rows) - missed} of {len(rows)} checks met."]
    return "\n".join(lines)


def artifact_sizes(artifact: Path) -> list[dict[str, Any]]:
    from seqedge.artifact import read_manifest
    from seqedge.evaluate.latency import variant_bytes

    return [{"target": v.target, "quantization": v.tag, "bytes": variant_bytes(v),
             "files": sorted(rec["path"] for rec in v.files.values())} for v in read_manifest(artifact).variants]


def sizes_markdown(sizes: list[dict[str, Any]], params: int, state_bytes: int) -> str:
    lines = ["## Artifact size per target and quantization", "",
             f"Model: {params:,} parameters; recurrent state {state_bytes / 1024:.1f} KiB per sequence at any context.",
             "", "| target | quantization | size | files |", "|---|---|---|---|"]
    lines += [f"| {s['target']} | {s['quantization']} | {s['bytes'] / 2 ** 20:.2f} MiB | {', '.join(s['files'])} |"
              for s in sizes]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Recorded per-token latency benchmark of the bundled model.")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: contexts {QUICK['contexts']}, {QUICK['steps']} steps, results to a temp dir")
    p.add_argument("--checkpoint", help="model checkpoint (default: the bundled model)")
    p.add_argument("--artifact", help="an existing artifact directory (default: export the checkpoint to a temp dir)")
    p.add_argument("--targets", default="onnx,onnx-ort,executorch",
                   help="export targets (a torch variant is always exported too; default: %(default)s)")
    p.add_argument("--quantize", default="fp32,fp16,int8-dynamic,int4-mlp",
                   help="quantization recipes (default: %(default)s)")
    p.add_argument("--runtimes", default="torch,onnxruntime,onnxruntime-fused,executorch",
                   help="runtimes (default: %(default)s)")
    p.add_argument("--contexts", help=f"override the contexts (default {FULL['contexts']}; quick {QUICK['contexts']})")
    p.add_argument("--steps", type=int, help=f"override timed steps per context (default {FULL['steps']})")
    p.add_argument("--baseline-checkpoint", help="trained transformer baseline (default: random weights; latency "
                                                 "does not depend on them)")
    p.add_argument("--no-baseline", action="store_true", help="skip the transformer KV-cache baseline")
    p.add_argument("--out", help="results directory (default: benchmarks/results; --quick: a temp dir)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from seqedge.defaults import default_checkpoint_dir
    from seqedge.model import load_pretrained

    args = parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    if args.contexts:
        settings["contexts"] = args.contexts
    if args.steps:
        settings["steps"] = args.steps
    config = BenchConfig(**{**settings, "contexts": parse_contexts(settings["contexts"])})
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="seqedge-latency-quick-")) if args.quick
                                           else RESULTS)
    checkpoint = args.checkpoint or str(default_checkpoint_dir())
    model = load_pretrained(checkpoint).eval()
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="seqedge-latency-") as tmp:
        artifact = Path(args.artifact) if args.artifact else export_artifact(
            args.checkpoint, Path(tmp) / "artifact", split(args.targets), split(args.quantize))
        stream = token_stream(config.stream_length() + config.prefill_tokens)
        show = not args.no_progress
        results: list[RunResult] = []
        bar, progress = progress_bar("torch-eager/fp32", total_tokens(config), show)
        results.append(bench_stepper(TorchEagerStepper(model), config, stream, progress))
        bar.close()
        measured, skipped = bench_artifact(artifact, config, split(args.runtimes), split(args.quantize),
                                           show_progress=show)
        results += measured
        if not args.no_baseline:
            baseline, onnx_path = build_baseline(model.config, tmp, args.baseline_checkpoint)
            bar, progress = progress_bar("transformer-kv/onnxruntime", total_tokens(config), show)
            results.append(bench_stepper(KVCacheStepper(onnx_path, baseline.config), config, stream, progress,
                                         kind="baseline", measure_prefill=False))
            bar.close()
        sizes = artifact_sizes(artifact)
    checks = evaluate_targets(results)
    state_bytes = results[0].contexts[0].memory_bytes
    report = BenchReport(
        results, skipped, config, title="seqedge runtime latency: bundled model, batch 1, CPU",
        artifact=str(artifact) if args.artifact else f"exported from {checkpoint} to a temporary directory",
        sections=[targets_markdown(checks), sizes_markdown(sizes, model.num_parameters(), state_bytes),
                  "The transformer baseline (dashed in the plot) is the matched softmax-attention model with a KV "
                  "cache growing by one position per step, in ONNX Runtime; its cache is filled with random "
                  "entries up to each context (step cost depends on cache length only), so it has no prefill "
                  "figures."],
        extra={"checks": checks, "artifact_sizes": sizes, "checkpoint": checkpoint, "quick": args.quick,
               "wall_s": round(time.perf_counter() - started, 1)})
    paths = write_report(report, out, stem="runtime_latency")
    print((out / "runtime_latency.md").read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    failed = [s for s in skipped if s.failed]
    for s in failed:
        print(f"runtime_latency: {s.name} FAILED: {s.reason}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
