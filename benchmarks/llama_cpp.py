"""seqedge beside llama.cpp on one Mamba2 model: per-token decode p50/p99 at several contexts and prefill tok/s.

    python benchmarks/llama_cpp.py [--threads 2] [--contexts 0,1k,16k] [--steps 64] [--workdir DIR]

One run, one machine, the same thread count on both sides:
1. llama.cpp is built from the source distribution of ``llama-cpp-python`` on the package index (pip downloads the
   sdist; nothing else is fetched) in the benchmark's own work folder, with the CPU features this machine grants
   (a native build can pick instructions the VM does not allow, so the flags are set from /proc/cpuinfo);
2. the model: transformers' ``Mamba2ForCausalLM`` with mamba2-130m's config and seeded random weights, saved as a
   Hugging Face folder; llama.cpp's converter turns it into GGUF (f32, then q8_0 and q4_0 by llama-quantize) and
   ``seqedge import`` / ``seqedge export`` turn the same folder into seqedge artifacts;
3. both sides are timed from Python in one process with the same loop, one precision class at a time: the
   engines prefill the same ``context`` tokens in pieces, then decode ``steps`` single-token calls in blocks,
   taking turns piece by piece and block by block so that the VM's slow phases hit every engine alike, each
   call timed alone
   (llama.cpp through the sdist's own ctypes binding over the libraries built in 1).
   A prefill keeps the last token's logits only on both sides (``Llama.eval`` without ``logits_all``;
   ``Session.prefill(..., logits="last")``), as a prompt before generation does;
4. every row carries the step's floor on this machine (:mod:`seqedge.evaluate.floor`: bandwidth and peak
   measured once before the models load) and its p50 over it: how close a step comes to what the machine allows.

Writes benchmarks/results/llama_cpp.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from hf_models import MAMBA2_130M, make_mamba2_130m

from seqedge.evaluate.bench_results import parse_contexts
from seqedge.evaluate.floor import measure_limits, step_floor, step_flops
from seqedge.evaluate.run_info import metadata_markdown, run_metadata
from seqedge.state import state_nbytes

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LLAMA_CPP_PYTHON = "0.3.36"
GGUF_TYPES = ("f32", "q8_0", "q4_0")


@dataclass
class Row:
    engine: str            # llama.cpp or a seqedge runtime
    variant: str           # f32 / q8_0 / q4_0, or a seqedge variant tag
    precision: str         # fp32, int8, int4: what is compared with what
    context: int
    p50_ms: float
    p99_ms: float
    prefill_tok_s: float   # of the ``context`` prompt (0 when context is 0)
    file_mib: float
    load_1min: float = 0.0  # the machine's 1-minute load average when the row was measured (2 cores: 2 is busy)
    floor_ms: float = 0.0   # the step's floor on this machine (seqedge.evaluate.floor); 0 where not measured


def run(cmd: list[str], **kw) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run(cmd, check=True, **kw)


# llama.cpp: build, convert, quantize ----------------------------------------------------------------------
def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def build_llama_cpp(work: Path) -> Path:
    """The sdist's llama.cpp built once into ``work/build``; returns the unpacked sdist folder."""
    src = work / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
    if not src.is_dir():
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(work)])
        with tarfile.open(work / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz") as tar:
            tar.extractall(work, filter="data")
    build = work / "build"
    if not (build / "bin" / "llama-quantize").is_file():
        flags = cpu_flags()
        on = lambda flag: "ON" if flag in flags else "OFF"      # noqa: E731
        run(["cmake", "-S", str(src / "vendor" / "llama.cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
             "-DGGML_NATIVE=OFF", f"-DGGML_AVX={on('avx')}", f"-DGGML_AVX2={on('avx2')}", f"-DGGML_FMA={on('fma')}",
             f"-DGGML_F16C={on('f16c')}", f"-DGGML_AVX512={on('avx512f')}", "-DGGML_AMX_TILE=OFF",
             "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
             "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF"])
        run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2), "--target", "llama-bench",
             "llama-quantize"])
    # the sdist's own ctypes binding, over the libraries just built (what `pip install` would have assembled)
    site = work / "site"
    if not (site / "llama_cpp").is_dir():
        shutil.copytree(src / "llama_cpp", site / "llama_cpp")
        lib = site / "llama_cpp" / "lib"
        lib.mkdir(exist_ok=True)
        for so in build.rglob("*.so*"):
            shutil.copy2(so, lib / so.name)
        # the binding's pure-Python needs, beside it rather than in the caller's environment
        run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(site), "diskcache>=5.6.1"])
    return src


def make_gguf(src: Path, work: Path, hf: Path) -> dict[str, Path]:
    out = {"f32": work / "mamba2-f32.gguf"}
    if not out["f32"].is_file():
        env = {**os.environ, "PYTHONPATH": str(src / "vendor" / "llama.cpp" / "gguf-py")}
        run([sys.executable, str(src / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"), str(hf), "--outfile",
             str(out["f32"]), "--outtype", "f32"], env=env)
    for q in GGUF_TYPES[1:]:
        out[q] = work / f"mamba2-{q}.gguf"
        if not out[q].is_file():
            run([str(work / "build" / "bin" / "llama-quantize"), str(out["f32"]), str(out[q]), q.upper()])
    return out


# timing ---------------------------------------------------------------------------------------------------
WARMUP = 4
ROUNDS = 4      # decode blocks per engine and context, alternating engines: slow phases of the VM hit all alike
# prompt tokens per prefill call, alternating engines likewise (this VM's speed moves by 20-40% for seconds at a
# time: one engine's whole 16K prompt in one go could fall in a slow phase, the other's in a fast one). llama.cpp's
# batch (n_batch below) and a multiple of seqedge's chunk, so neither side computes otherwise than in one call.
PREFILL_PIECE = 512
PRECISION_OF_GGUF = {"f32": "fp32", "q8_0": "int8", "q4_0": "int4"}


@dataclass
class Engine:
    """One model on one engine, driven the same way on both sides: ``reset``, ``prefill(prompt)``,
    ``step(token)``."""
    engine: str
    variant: str
    precision: str
    file_mib: float
    reset: Callable[[], None]
    prefill: Callable[[np.ndarray], None]
    step: Callable[[int], None]
    floor_ms: float = 0.0
    pages: str = ""          # a seqedge session's huge pages (Session.describe())


def llama_engine(path: Path, quant: str, n_ctx: int, threads: int, work: Path, floor: Callable[[int], float]
                 ) -> Engine:
    """llama.cpp through the sdist's ctypes binding; ``Llama.eval`` keeps the last token's logits only. Its floor
    (``floor(weight bytes)``) reads the GGUF file's bytes: the tied embedding is read whole by the head."""
    sys.path.insert(0, str(work / "site"))
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=PREFILL_PIECE, n_threads=threads,
                n_threads_batch=threads, verbose=False)
    return Engine("llama.cpp", quant, PRECISION_OF_GGUF[quant], path.stat().st_size / 2**20, llm.reset,
                  lambda prompt: llm.eval(prompt.tolist()), lambda token: llm.eval([token]),
                  floor(path.stat().st_size))


def seqedge_engine(artifact: Path, runtime: str, tag: str, threads: int, floor: Callable[[int], float]) -> Engine:
    """A seqedge Session; a prefill keeps the last token's logits only, as a prompt before generation does. Its
    floor (``floor(weight bytes)``) reads what the export recorded a step reads."""
    import seqedge
    from seqedge.evaluate.latency import step_weight_bytes

    # llama.cpp's thread count; ExecuTorch's pool is per process (its size is in the session's describe())
    options = {"threads": threads} if runtime.startswith("onnxruntime") else {}
    sess = seqedge.load(artifact, runtime=runtime, quantization=tag, **options)
    box = [sess.init_state(1)]

    def reset() -> None:
        box[0] = sess.init_state(1)

    def prefill(prompt: np.ndarray) -> None:
        _, box[0] = sess.prefill(prompt[None], box[0], logits="last")

    def step(token: int) -> None:
        _, box[0] = sess.step(np.asarray([token]), box[0], donate=True)

    return Engine(f"seqedge {runtime}", tag, tag, sum(f["bytes"] for f in sess.variant.files.values()) / 2**20,
                  reset, prefill, step, floor(step_weight_bytes(sess.variant)), sess.describe()["huge_pages"])


def bench_engines(engines: list[Engine], contexts: list[int], steps: int, vocab: int, seed: int = 0) -> list[Row]:
    """Per context: every engine prefills the same prompt in pieces of ``PREFILL_PIECE`` tokens, the engines
    taking turns piece by piece (order reversed every piece), tok/s over the sum of an engine's piece times; then
    they decode the same tokens in ``ROUNDS`` blocks, taking turns block by block (order reversed every round),
    each step timed alone. p50/p99 over all of an engine's steps."""
    rng = np.random.default_rng(seed)
    rows = []
    for ctx in contexts:
        prompt = rng.integers(1, vocab - 1, size=max(ctx, 1))
        tokens = rng.integers(1, vocab - 1, size=steps + WARMUP)
        times = {e.engine: [] for e in engines}
        prefill_s = {e.engine: 0.0 for e in engines}
        for e in engines:
            e.reset()
        for i, start in enumerate(range(0, len(prompt), PREFILL_PIECE)):     # context 0: one token, untimed
            for e in (engines if i % 2 == 0 else engines[::-1]):
                t0 = time.perf_counter()
                e.prefill(prompt[start:start + PREFILL_PIECE])
                prefill_s[e.engine] += time.perf_counter() - t0
        prefill = {name: ctx / s if ctx else 0.0 for name, s in prefill_s.items()}
        for e in engines:
            for t in tokens[:WARMUP]:           # first-call allocations
                e.step(int(t))
        block = -(-steps // ROUNDS)
        for r in range(ROUNDS):
            for e in (engines if r % 2 == 0 else engines[::-1]):
                for t in tokens[WARMUP + r * block:WARMUP + min(steps, (r + 1) * block)]:
                    t0 = time.perf_counter()
                    e.step(int(t))
                    times[e.engine].append(time.perf_counter() - t0)
        load = os.getloadavg()[0]
        for e in engines:
            ms = np.asarray(times[e.engine]) * 1e3
            rows.append(Row(e.engine, e.variant, e.precision, ctx, float(np.percentile(ms, 50)),
                            float(np.percentile(ms, 99)), prefill[e.engine], e.file_mib, load, e.floor_ms))
            print(rows[-1], flush=True)
    return rows


def export_seqedge(hf: Path, work: Path, targets: str, recipes: str, max_batch: int, reuse: bool,
                   group_size: int = 32) -> Path:
    """The seqedge artifact of ``hf``: exported afresh (the code under test may have changed since the last run)
    unless ``reuse`` and one is there; ``group_size``: int4 weights per scale group."""
    art = work / "artifact"
    if not (reuse and (art / "manifest.json").is_file()):
        cli = [sys.executable, "-m", "seqedge.cli.main"]
        run([*cli, "import", str(hf), "-o", str(work / "checkpoint"), "--overwrite"])
        run([*cli, "export", "-m", str(work / "checkpoint"), "--target", targets, "--quantize", recipes,
             "--max-batch", str(max_batch), "--group-size", str(group_size), "-o", str(art), "--overwrite"])
    return art


# report ---------------------------------------------------------------------------------------------------
def _groups(kept: Any) -> list[dict]:
    """A record's kept-row groups: a list of {engines, commit, date, command}; older records hold one dict."""
    return [] if not kept else [kept] if isinstance(kept, dict) else list(kept)


def kept_provenance(engines: list[str], last_meta: dict) -> list[dict]:
    """Where the rows of ``engines``, carried over from the record whose meta is ``last_meta``, were measured:
    that run, or for rows it had itself carried over, the run they came from (grouped by run)."""
    keys = ("commit", "date", "command")
    groups: dict[tuple, dict] = {}
    for engine in engines:
        origin = next((g for g in _groups(last_meta.get("kept_rows")) if engine in g["engines"]), last_meta)
        run = tuple(origin.get(k) for k in keys)
        groups.setdefault(run, {"engines": [], **dict(zip(keys, run))})["engines"].append(engine)
    return list(groups.values())


def render(rows: list[Row], meta: dict) -> str:
    lines = ["# seqedge beside llama.cpp: Mamba2 (mamba2-130m's config, random weights)", "",
             *metadata_markdown(meta),
             f"- threads: {meta['threads']} on both sides; llama.cpp from the llama-cpp-python "
             f"{meta['llama_cpp_python']} sdist (GGML_NATIVE=OFF, this CPU's AVX flags on, AMX off)",
             *([f"- seqedge int4: groups of {meta['int4_group_size']} weights, asymmetric (float32 scale and 4-bit "
                f"zero point per group: {int4_bits(meta['int4_group_size']):.2f} bits a weight); llama.cpp q4_0: "
                f"groups of 32, symmetric, float16 scale (4.50 bits)"] if meta.get("int4_group_size") else []),
             *(["- seqedge's memory on 2 MiB pages (runtimes/huge_pages.py), as each session reported at load: "
                + "; ".join(f"{k}: {v}" for k, v in meta["huge_pages"].items()) + ". llama.cpp's weights are its "
                "mmap of the GGUF file, as it runs alone"] if meta.get("huge_pages") else []),
             *[f"- rows of {', '.join(group['engines'])} are not from this run: kept from the run of commit "
              f"{group.get('commit')} ({group.get('date')})" for group in _groups(meta.get("kept_rows"))], "",
             "| engine | variant | precision | context | p50 ms/token | p99 ms/token | tok/s (p50) | prefill tok/s "
             "| file MiB | floor ms | p50 / floor | load (1 min) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r.precision, r.context, r.engine)):
        floor = f"{r.floor_ms:.2f} | {r.p50_ms / r.floor_ms:.2f}" if r.floor_ms else "- | -"
        lines.append(f"| {r.engine} | {r.variant} | {r.precision} | {r.context} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
                     f"{1e3 / r.p50_ms:.1f} | {r.prefill_tok_s:.0f} | {r.file_mib:.1f} | {floor} | "
                     f"{r.load_1min:.2f} |")
    if meta.get("limits"):
        bandwidth = ", ".join(f"{int(k) >> 20} MiB {v / 1e9:.1f}" for k, v in sorted(
            meta["limits"]["bandwidth_by_bytes"].items(), key=lambda kv: int(kv[0])))
        lines += ["", f"Floor: a step's weight bytes and its state read once and the state written once at this "
                  f"machine's copy bandwidth (GB/s by working set: {bandwidth}), or its FLOPs at "
                  f"{meta['limits']['peak_flops'] / 1e9:.0f} GFLOP/s, whichever is longer "
                  f"(seqedge.evaluate.floor). llama.cpp's weight bytes: its GGUF file; seqedge's: what the export "
                  f"recorded a step reads."]
    lines += ["", "Against llama.cpp, seqedge's best variant per precision class and context (decode: p50 over "
              "llama.cpp's, at most 1.00 meets the target; prefill: llama.cpp's tok/s over seqedge's; the best "
              "variant's p50 over its floor, at most 2 meets that target):", "",
              "| precision | context | llama.cpp p50 ms | seqedge best p50 ms | decode ratio | prefill ratio | "
              "best / floor |", "|---|---:|---:|---:|---:|---:|---:|"]
    for precision, context, llama, best, decode, prefill in ratios(rows):
        over = f"{best.p50_ms / best.floor_ms:.2f}" if best.floor_ms else "-"
        lines.append(f"| {precision} | {context} | {llama.p50_ms:.2f} | {best.p50_ms:.2f} ({best.engine}) | "
                     f"{decode:.2f} | {prefill if prefill is not None else '-'} | {over} |")
    if meta.get("notes"):             # written after a run into the JSON's meta; --render-only keeps them
        lines += ["", "## Notes", "", *(f"- {note}" for note in meta["notes"])]
    return "\n".join(lines) + "\n"


def int4_bits(group: int) -> float:
    """Bits per weight of seqedge's int4 packing at ``group`` weights per group: 4-bit codes, a float32 scale and
    a 4-bit zero point per group."""
    return 4 + (32 + 4) / group


def ratios(rows: list[Row]) -> list[tuple]:
    """Per (precision, context) with a llama.cpp row: (precision, context, llama.cpp's row, seqedge's fastest
    row, its p50 over llama.cpp's, llama.cpp's prefill tok/s over seqedge's best or None at context 0)."""
    out = []
    for llama in sorted((r for r in rows if r.engine == "llama.cpp"), key=lambda r: (r.precision, r.context)):
        ours = [r for r in rows if r.engine != "llama.cpp" and (r.precision, r.context) == (llama.precision,
                                                                                          llama.context)]
        if not ours:
            continue
        best = min(ours, key=lambda r: r.p50_ms)
        fastest_prefill = max(r.prefill_tok_s for r in ours)
        prefill = round(llama.prefill_tok_s / fastest_prefill, 2) if llama.context and fastest_prefill else None
        out.append((llama.precision, llama.context, llama, best, best.p50_ms / llama.p50_ms, prefill))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--contexts", default="0,1k,16k")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "seqedge" / "llama-cpp-bench")
    p.add_argument("--targets", default="onnx,onnx-ort,executorch", help="seqedge targets to export and time")
    p.add_argument("--recipes", default="fp32,int8-dynamic,int4-all",
                   help="seqedge quantization recipes (int4-all: Mamba2 has no MLP for int4-mlp to pack)")
    p.add_argument("--group-size", type=int, default=32,
                   help="int4 weights per scale group of the seqedge export (32, its default: 5.1 bits a weight with "
                        "the float32 scales and 4-bit zero points; 64: 4.6, q4_0's 4.5 the nearest)")
    p.add_argument("--max-batch", type=int, default=1,
                   help="seqedge export's --max-batch (executorch): 1, the single-stream program this compares")
    p.add_argument("--reuse-artifact", action="store_true",
                   help="time the seqedge artifact of the last run instead of exporting it again")
    p.add_argument("--skip-seqedge", action="store_true", help="time llama.cpp only")
    p.add_argument("--keep-rows", action="store_true",
                   help="keep the last result's rows of the engines this run does not time (e.g. executorch when "
                        "--targets leaves it out); the result names the run they come from")
    p.add_argument("--render-only", action="store_true", help="rewrite llama_cpp.md from llama_cpp.json and exit")
    args = p.parse_args(argv)
    if args.render_only:
        record = json.loads((RESULTS / "llama_cpp.json").read_text())
        (RESULTS / "llama_cpp.md").write_text(render([Row(**r) for r in record["rows"]], record["meta"]))
        return 0
    contexts = list(parse_contexts(args.contexts))
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    src = build_llama_cpp(work)
    hf = work / "mamba2-130m-random"
    make_mamba2_130m(hf, args.seed)
    vocab = MAMBA2_130M["vocab_size"]
    rows: list[Row] = []
    ggufs = make_gguf(src, work, hf)
    variants = []
    limits = measure_limits()       # before any model is loaded: the machine as quiet as it gets
    floor: Callable[[int], float] = lambda nbytes: 0.0                          # noqa: E731
    if not args.skip_seqedge:
        from seqedge.artifact import read_manifest
        from seqedge.targets import RUNTIME_OF_TARGET

        art = export_seqedge(hf, work, args.targets, args.recipes, args.max_batch, args.reuse_artifact,
                             args.group_size)
        manifest = read_manifest(art)
        variants = [(RUNTIME_OF_TARGET[v.target], v.tag) for v in manifest.variants if v.target != "torch"]
        # one model on both sides: the same state and FLOPs per token, the engines' weight bytes differ
        state, flops = state_nbytes(manifest.state_specs, 1), step_flops(manifest.config)
        floor = lambda nbytes: step_floor(nbytes, state, flops, limits)["floor_ms"]  # noqa: E731
    pages: dict[str, str] = {}
    for quant, path in ggufs.items():
        # seqedge's sessions first: a load advises the process's written memory onto huge pages
        # (runtimes/huge_pages.py), which would otherwise take in llama.cpp's buffers, not advised when it runs alone
        engines = [seqedge_engine(art, runtime, tag, args.threads, floor) for runtime, tag in variants
                   if tag == PRECISION_OF_GGUF[quant]]
        engines.insert(0, llama_engine(path, quant, max(contexts) + args.steps + WARMUP + 16, args.threads, work,
                                       floor))
        pages.update({f"{e.engine} {e.variant}": e.pages for e in engines if e.pages})
        rows += bench_engines(engines, contexts, args.steps, vocab, args.seed)
        del engines                     # one precision's models in memory at a time
    meta = run_metadata(threads=args.threads, llama_cpp_python=LLAMA_CPP_PYTHON, limits=limits.to_dict(),
                        int4_group_size=args.group_size, huge_pages=pages)
    if args.keep_rows and (RESULTS / "llama_cpp.json").is_file():
        last = json.loads((RESULTS / "llama_cpp.json").read_text())
        timed = {r.engine for r in rows}
        kept = [Row(**r) for r in last["rows"] if r["engine"] not in timed]
        if kept:
            meta["kept_rows"] = kept_provenance(sorted({r.engine for r in kept}), last["meta"])
            rows += kept
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "llama_cpp.json").write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2))
    (RESULTS / "llama_cpp.md").write_text(render(rows, meta))
    print(render(rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
