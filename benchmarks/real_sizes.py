"""Real-size imported models through the pipeline: export time and peak RAM per target and recipe, artifact
sizes, validation and per-token latency at several contexts, on this machine.

    python benchmarks/real_sizes.py [--models mamba2-130m,gated-deltanet-340m] [--targets onnx,onnx-ort,...]
                                    [--recipes fp32,fp16,int8-dynamic,int4-mlp] [--contexts 0,1k,16k]
                                    [--workdir DIR] [--force]

The models are Hugging Face folders with seeded random weights built from published configs (``hf_models.py``:
mamba2-130m's config with transformers' classes; a ~340M Gated DeltaNet with fla's). Each (model, target, recipe)
is one ``seqedge export -m HF_DIR`` call (the import path a user takes), timed with its peak resident memory (the
process tree's RSS, sampled every 0.1 s), then ``seqedge validate`` and ``seqedge bench`` on the artifact. Every
finished cell is saved at once, so an interrupted run resumes where it stopped (``--force`` redoes cells).

Targets: export under 5 minutes per target with peak RAM under 6 GB for the 130M model (2 cores, 24 GB).
Writes benchmarks/results/real_sizes.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from hf_models import BUILDERS

from seqedge.evaluate.run_info import metadata_markdown, run_metadata
from seqedge.targets import RUNTIME_OF_TARGET

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EXPORT_LIMIT_S = 300.0
EXPORT_LIMIT_BYTES = 6 * 10**9
TARGET_MODELS = ("mamba2-130m",)      # the export limits are the 130M model's; no target is set for the others
CLI = [sys.executable, "-m", "seqedge.cli.main"]
BATCH_BOUND_TARGETS = ("executorch", "tensorrt")     # the targets whose programs are compiled for a batch range


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def timed(cmd: list[str], log: Path, timeout: float) -> dict:
    """Run ``cmd`` (output to ``log``): exit code, wall seconds, peak RSS of its process tree."""
    peak = [0]
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        ps = psutil.Process(proc.pid)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.1):
                try:
                    peak[0] = max(peak[0], _tree_rss(ps))
                except psutil.Error:
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        timed_out = False
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for child in ps.children(recursive=True):
                child.kill()
            proc.kill()
            code, timed_out = proc.wait(), True
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
    return {"exit": code, "wall_s": round(wall, 1), "peak_rss_bytes": peak[0], "log": str(log),
            "timed_out": timed_out}


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _tail(log: str, lines: int = 3) -> str:
    return " | ".join(Path(log).read_text(errors="replace").strip().splitlines()[-lines:])


def run_cell(hf: Path, work: Path, target: str, recipe: str, contexts: str, steps: int,
             export_timeout: float = 3600, max_batch: int | None = None) -> dict:
    art = work / f"artifact-{target}-{recipe}"
    cell: dict = {"target": target, "recipe": recipe}
    batch = []
    if target in BATCH_BOUND_TARGETS and max_batch is not None:
        cell["max_batch"] = max_batch
        batch = ["--max-batch", str(max_batch)]
    cell["export"] = timed([*CLI, "export", "-m", str(hf), "--target", target, "--quantize", recipe, "-o", str(art),
                            "--overwrite", "-q", *batch], work / f"export-{target}-{recipe}.log",
                           timeout=export_timeout)
    if cell["export"]["timed_out"]:
        cell["export"]["error"] = f"stopped by the {export_timeout:.0f} s time box (--export-timeout)"
        return cell
    if cell["export"]["exit"] != 0:
        cell["export"]["error"] = _tail(cell["export"]["log"])
        return cell
    variant_dirs = [d for d in art.iterdir() if d.is_dir() and d.name.startswith(target)]
    cell["artifact_bytes"] = sum(_size(d) for d in variant_dirs) or _size(art)
    if target == "coreml":        # Core ML predicts only on macOS: converted and hashed here, not run
        cell["validate"] = cell["bench"] = "not run: Core ML predicts only on macOS"
        return cell
    val = timed([*CLI, "validate", "-m", str(art), "--runtimes", RUNTIME_OF_TARGET[target], "-q"],
                work / f"validate-{target}-{recipe}.log", timeout=3600)
    cell["validate"] = {"exit": val["exit"], "wall_s": val["wall_s"], "summary": _tail(val["log"], 2)}
    with tempfile.TemporaryDirectory() as tmp:
        bench = timed([*CLI, "bench", "-m", str(art), "--runtimes", RUNTIME_OF_TARGET[target], "--contexts", contexts,
                       "--steps", str(steps), "-q", "-o", tmp],
                      work / f"bench-{target}-{recipe}.log", timeout=3600)
        report = Path(tmp) / "bench.json"
        if bench["exit"] == 0 and report.is_file():
            rows = json.loads(report.read_text())["results"]
            cell["bench"] = [{"name": r["name"], "peak_rss_bytes": r["peak_rss_bytes"],
                              "p50_ms": {str(c["context"]): round(c["p50_ms"], 3) for c in r["contexts"]},
                              "p99_ms": {str(c["context"]): round(c["p99_ms"], 3) for c in r["contexts"]}}
                             for r in rows]
        else:
            cell["bench"] = f"failed (exit {bench['exit']}): {_tail(bench['log'])}"
    return cell


def render(record: dict) -> str:
    lines = ["# Real-size imported models: export, size, validation, latency", "",
             *metadata_markdown(record["meta"]), "",
             (f"Targets: export under {EXPORT_LIMIT_S / 60:.0f} min per target with peak RAM under "
             f"{EXPORT_LIMIT_BYTES / 1e9:.0f} GB (the 130M model; \"(over)\" marks a miss)."), ""]
    if record.get("notes"):       # what the table alone does not say, written beside the run's cells
        lines += ["## Notes", "", *(f"- {note}" for note in record["notes"]), ""]
    for model, cells in record["models"].items():
        info = record["model_info"].get(model, {})
        targeted = model in TARGET_MODELS
        lines += [f"## {model}", "", (f"Parameters: {info.get('parameters', '?'):,}; HF folder built in "
                  f"{info.get('build_s', '?')} s."), "",
                  ("| target | recipe | export s | peak RAM GB | artifact MiB | validate | p50 ms at contexts | "
                  "bench peak RSS MiB |"), "|---|---|---:|---:|---:|---|---|---:|"]
        for key in sorted(cells):
            c = cells[key]
            e = c["export"]
            target = c["target"] + (f" (max batch {c['max_batch']})" if "max_batch" in c else "")
            if e["exit"] != 0 or e.get("timed_out"):
                over = " (over)" if targeted and e["wall_s"] > EXPORT_LIMIT_S else ""
                lines.append(f"| {target} | {c['recipe']} | {e['wall_s']}{over} | {e['peak_rss_bytes'] / 1e9:.2f} "
                             f"| - | export failed: {e.get('error', '')[:120]} | - | - |")
                continue
            val = c["validate"] if isinstance(c["validate"], str) else \
                ("passed" if c["validate"]["exit"] == 0 else f"failed: {c['validate']['summary'][:80]}")
            if isinstance(c["bench"], list):
                p50 = "; ".join(f"{r['name']}: " + ", ".join(f"{k}: {v}" for k, v in r["p50_ms"].items())
                                for r in c["bench"])
                rss = ", ".join(f"{r['peak_rss_bytes'] / 2**20:.0f}" for r in c["bench"])
            else:
                p50, rss = c["bench"], "-"
            missed = e["wall_s"] > EXPORT_LIMIT_S or e["peak_rss_bytes"] > EXPORT_LIMIT_BYTES
            over = " (over)" if targeted and missed else ""
            lines.append(f"| {target} | {c['recipe']} | {e['wall_s']}{over} | {e['peak_rss_bytes'] / 1e9:.2f} | "
                         f"{c['artifact_bytes'] / 2**20:.1f} | {val} | {p50} | {rss} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def save(record: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name, text in (("real_sizes.json", json.dumps(record, indent=2) + "\n"), ("real_sizes.md", render(record))):
        tmp = RESULTS / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, RESULTS / name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(BUILDERS), help="comma list of " + ", ".join(BUILDERS))
    p.add_argument("--targets", default="onnx,onnx-ort,executorch,coreml")
    p.add_argument("--recipes", default="fp32,fp16,int8-dynamic,int4-mlp")
    p.add_argument("--contexts", default="0,1k,16k")
    p.add_argument("--steps", type=int, default=50, help="timed steps per context")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "seqedge" / "real-sizes")
    p.add_argument("--force", action="store_true", help="redo cells already in the result file")
    p.add_argument("--export-timeout", type=float, default=3600,
                   help="seconds an export may take before it is stopped and recorded as such (default 3600)")
    p.add_argument("--render-only", action="store_true", help="rewrite real_sizes.md from the JSON and exit")
    p.add_argument("--max-batch", type=int, metavar="N",
                   help="batch bound of the executorch and tensorrt exports (default: seqedge export's; 1 is the "
                        "static single-stream program an on-device app runs)")
    args = p.parse_args(argv)
    path = RESULTS / "real_sizes.json"
    record = json.loads(path.read_text()) if path.is_file() else {"models": {}, "model_info": {}}
    if args.render_only:
        save(record)
        return 0
    record["meta"] = run_metadata(note="cells keep the date of the run that made them; see each log")
    for model in args.models.split(","):
        work = args.workdir / model
        work.mkdir(parents=True, exist_ok=True)
        hf = work / "hf"
        t0 = time.perf_counter()
        BUILDERS[model](hf, args.seed)
        if model not in record["model_info"]:
            from safetensors import safe_open

            params = 0
            for f in hf.glob("*.safetensors"):
                with safe_open(f, "pt") as st:
                    params += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
            record["model_info"][model] = {"parameters": params, "build_s": round(time.perf_counter() - t0, 1)}
        cells = record["models"].setdefault(model, {})
        for target in args.targets.split(","):
            for recipe in args.recipes.split(","):
                key = f"{target}/{recipe}"
                if key in cells and not args.force:
                    continue
                print(f"{model} {key} ...", flush=True)
                cells[key] = {**run_cell(hf, work, target, recipe, args.contexts, args.steps,
                                       args.export_timeout, args.max_batch),
                              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "load_average": list(os.getloadavg())}
                print(json.dumps(cells[key]), flush=True)
                save(record)
    save(record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
