"""Tokens/s of the JavaScript runner (runners/web): Node.js on onnxruntime-node and the browser page on
onnxruntime-web (WASM) in headless Chromium, beside the Python ``onnxruntime-fused`` session on the same graphs.

The bundled model is exported to onnx-ort (fp32, int8); each runner generates the same greedy completion of one
prompt (the three texts are checked equal). Decode tokens/s counts the tokens after the first over the time after
the first; prefill is the prompt's time to the first token. Median of ``--repeats`` runs.
Results: benchmarks/results/runner_web.{json,md}.

    python benchmarks/runner_web.py                 # the recorded run
    python benchmarks/runner_web.py --tokens 32 --repeats 1 --out /tmp/rw     # smoke test
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "runners" / "web"
RESULTS = ROOT / "benchmarks" / "results"
CHROMIUM = "/usr/bin/chromium"
PROMPT = ("class ArgumentParser(_AttributeHolder, _ActionsContainer):\n"
          "    \"\"\"Object for parsing command line strings into Python objects.\n\n"
          "    Keyword Arguments:\n")


def python_run(artifact: Path, quantization: str, tokens: int) -> dict[str, Any]:
    import seqedge
    from seqedge.tokenizer import ByteTokenizer

    session = seqedge.load(artifact, "onnxruntime-fused", quantization=quantization)
    start = time.perf_counter()
    first = None
    out = []
    for token in session.generate(PROMPT, tokens):
        first = first or time.perf_counter()
        out.append(token)
    end = time.perf_counter()
    return {"text": ByteTokenizer().decode(out), "prefill_ms": (first - start) * 1e3,
            "tokens_per_s": (len(out) - 1) / (end - first)}


def node_run(artifact: Path, quantization: str, tokens: int) -> dict[str, Any]:
    proc = subprocess.run(["node", str(WEB / "cli.mjs"), str(artifact), "-p", PROMPT, "-n", str(tokens),
                           "--quantization", quantization, "--json"], capture_output=True, text=True, check=True)
    data = json.loads(proc.stdout)
    return {"text": data["text"], "prefill_ms": data["prefill_seconds"] * 1e3,
            "tokens_per_s": data["decode_tokens_per_s"]}


def browser_run(artifact: Path, quantization: str, tokens: int) -> dict[str, Any]:
    proc = subprocess.run(["node", str(WEB / "drive.mjs"), str(artifact), "-p", PROMPT, "-n", str(tokens),
                           "--query", f"ep=wasm&quantization={quantization}", "--chromium", CHROMIUM],
                          capture_output=True, text=True)
    data = json.loads(proc.stdout)
    if data.get("error"):
        raise RuntimeError(f"the browser page failed: {data['status']}")
    return {"text": data["text"], "prefill_ms": data["prefill_ms"], "tokens_per_s": data["tokens_per_s"],
            "page": data["status"], "browser": data["browser"]}


RUNNERS = {"python onnxruntime-fused": python_run, "node onnxruntime-node": node_run,
           "browser onnxruntime-web (wasm)": browser_run}


def measure(artifact: Path, tokens: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for quantization in ("fp32", "int8"):
        texts = {}
        for name, fn in RUNNERS.items():
            runs = [fn(artifact, quantization, tokens) for _ in range(repeats)]
            texts[name] = runs[0]["text"]
            row = {"runner": name, "variant": f"onnx-ort/{quantization}", "tokens": tokens,
                   "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
                   "prefill_ms": statistics.median(r["prefill_ms"] for r in runs),
                   "runs_tokens_per_s": [round(r["tokens_per_s"], 2) for r in runs]}
            row.update({k: runs[0][k] for k in ("page", "browser") if k in runs[0]})
            rows.append(row)
            print(f"{row['variant']:14s} {name:32s} {row['tokens_per_s']:8.1f} tokens/s", flush=True)
        for row in rows[-len(RUNNERS):]:
            row["same_text_as_python"] = texts[row["runner"]] == texts["python onnxruntime-fused"]
    return rows


def versions() -> dict[str, str]:
    lock = json.loads((WEB / "package-lock.json").read_text())["packages"]
    out = {name: lock[f"node_modules/{name}"]["version"]
           for name in ("onnxruntime-web", "onnxruntime-node", "playwright-core")}
    out["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    out["chromium"] = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
    return out


def markdown(report: dict[str, Any]) -> str:
    from seqedge.evaluate.latency_report import machine_markdown

    lines = ["# JavaScript runner: tokens/s (runners/web)", "",
             f"- Date: {report['date']}", f"- Command: `{report['command']}`", machine_markdown(report["machine"]),
             f"- JS side: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}",
             f"- Prompt: {report['prompt_tokens']} tokens (BOS + bytes), then {report['tokens']} greedy tokens; "
             f"median of {report['repeats']} runs", "",
             "| variant | runner | decode tokens/s | prefill ms | same text as Python |", "|---|---|---:|---:|---|"]
    for r in report["results"]:
        lines.append(f"| {r['variant']} | {r['runner']} | {r['tokens_per_s']:.1f} | {r['prefill_ms']:.0f} | "
                     f"{'yes' if r['same_text_as_python'] else 'NO'} |")
    pages = sorted({r["page"] for r in report["results"] if "page" in r})
    lines += ["", "The browser page reported: " + "; ".join(f"`{p}`" for p in pages), ""]
    if not all(r["same_text_as_python"] for r in report["results"]):
        lines += ["A greedy text that differs from Python's comes from other kernels, not from the runner: int8 in "
                  "onnxruntime-web's WASM build rounds differently from native x86 ONNX Runtime (onnxruntime-node "
                  "matches Python bit for bit); tests/test_runner_web.py holds the WASM int8 logits to the int8 "
                  "budget against the float64 reference.", ""]
    lines += ["Load average far above the core count means the timings are shared-CPU timings (compare rows within "
              "one run, not across machines).", ""]
    return "\n".join(lines)


def main() -> int:
    from seqedge.evaluate.run_info import command_line, git_commit, machine_info
    from seqedge.tokenizer import ByteTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256, help="greedy tokens per run (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per runner and variant (median; default 3)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for runner_web.{json,md}")
    parser.add_argument("--render", action="store_true", help="only re-write runner_web.md from runner_web.json")
    args = parser.parse_args()
    if args.render:
        report = json.loads((args.out / "runner_web.json").read_text())
        (args.out / "runner_web.md").write_text(markdown(report))
        return 0
    from seqedge.defaults import default_checkpoint_dir
    from seqedge.export.api import export_model

    with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks", prefix=".runner_web-") as tmp:
        artifact = Path(tmp) / "art"
        export_model(default_checkpoint_dir(), artifact, ["onnx-ort"], ["fp32", "int8-dynamic"], progress=False)
        report = {"title": "JavaScript runner tokens/s", "machine": machine_info(),
                  "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "command": command_line(),
                  "commit": git_commit(),
                  "versions": versions(), "prompt_tokens": len(ByteTokenizer().encode(PROMPT, add_bos=True)),
                  "tokens": args.tokens, "repeats": args.repeats,
                  "results": measure(artifact, args.tokens, args.repeats)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runner_web.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "runner_web.md").write_text(markdown(report))
    print(f"wrote {args.out / 'runner_web.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
