"""Per-step cost of ``Session.step`` over the raw runtime call, graph node counts, and the floor, per variant.

For each artifact given, each of onnxruntime, onnxruntime-fused and executorch whose variants it holds, and each
recipe of ``--quantize`` the artifact holds for it (default fp32 and int8):

- node counts of the step graph, per layer: as exported (ONNX) and after ONNX Runtime's own optimiser, or the
  ExecuTorch program's instructions (XNNPACK delegate calls and portable kernel calls) and the operator nodes
  inside its delegates (the export's record);
- the raw runtime call (``InferenceSession.run`` / the ExecuTorch method's ``execute``, state carried),
  ``Session.step`` and the donated ``Session.step(..., donate=True)`` of a decode loop (``generate``'s), timed two
  ways: interleaved call by call (a busy machine slows all alike, but each call runs after the others' code and
  data) and as a decode loop runs them, in blocks of consecutive calls of one kind (the kinds' blocks alternate);
  p50 of each and the Session's overhead over the raw call, both ways;
- the raw call at the other thread count (1 or 2) than the Session's default choice: for onnxruntime interleaved
  with the rest, for executorch (one XNNPACK pool per process) in a pass of its own once the first session is
  closed;
- the step floor on this machine (seqedge.evaluate.floor) and the donated step's p50 as a multiple of it; the
  p50 target is checked on the donated step in the decode loop (consecutive donated steps, what ``generate`` runs);
- onnxruntime: where a step's time goes, by op type (ONNX Runtime's profiler);
- with ``--runner`` (``seqedge-run``, runners/cpp): the executorch variants' step in the C++ runner's own process
  (consecutive steps at context 0, its ``--bench``), at its default thread choice and at the other count;
- with ``--library`` (``libseqedge.so``, runners/cpp): the executorch variants again through a Python session on
  that library (``seqedge.load(..., "executorch", library=...)``); its raw call is the C function
  ``seqedge_run_buffers`` on the state's buffers.

    python benchmarks/step_overhead.py --artifact ART [--artifact OTHER] [--quantize fp32,int8]
        [--runner build/cpp/seqedge-run] [--library build/cpp/libseqedge.so] [--out benchmarks/results/step_overhead]

An artifact comes from ``seqedge export --target onnx,onnx-ort,executorch --quantize fp32,int8-dynamic --out ART``
(the bundled model).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

import seqedge
from seqedge.artifact import read_manifest
from seqedge.evaluate.floor import measure_limits, step_floor, step_flops
from seqedge.evaluate.latency import step_weight_bytes
from seqedge.evaluate.latency_report import command_line, machine_info, machine_markdown
from seqedge.state import state_nbytes

from probes.ort_timing import ort_profile

RUNTIMES = {"onnxruntime": "onnx", "onnxruntime-fused": "onnx-ort", "executorch": "executorch"}
TARGET_MS = 0.15          # step p50 target for onnxruntime-fused and executorch on the bundled model
TARGET_OVERHEAD = 0.10    # Session.step over the raw call
LOOP_BLOCK = 250          # consecutive calls of one kind in a decode-loop block


def ort_counts(path: Path, layers: int) -> dict[str, Any]:
    """Nodes of an ONNX graph as written and after ONNX Runtime's optimiser (ORT_ENABLE_ALL, CPU)."""
    import onnx
    import onnxruntime as ort

    written = Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        optimized = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath,
                                                          load_external_data=False).graph.node)
    total, after = sum(written.values()), sum(optimized.values())
    return {"written": total, "written_per_layer": total / layers, "after_ort": after,
            "after_ort_per_layer": after / layers, "written_ops": dict(written.most_common()),
            "after_ort_ops": dict(optimized.most_common())}


def pte_counts(path: Path, layers: int, delegation: dict[str, Any] | None = None) -> dict[str, Any]:
    """Instructions of the ExecuTorch program's step method (delegate calls and portable kernel calls) and, from
    the export's record (``delegation``), the operator nodes inside the XNNPACK delegates: each costs the call
    its share of XNNPACK's per-call runtime reshape."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(path.read_bytes())
    program = getattr(program, "program", program)
    plan = next(p for p in program.execution_plan if p.name == "step")
    instructions = plan.chains[0].instructions
    kinds = Counter(type(i.instr_args).__name__ for i in instructions)
    kernels = Counter(plan.operators[i.instr_args.op_index].name for i in instructions
                      if type(i.instr_args).__name__ == "KernelCall")
    out = {"written": len(instructions), "written_per_layer": len(instructions) / layers,
           "delegate_calls": kinds.get("DelegateCall", 0), "kernel_calls": dict(kernels.most_common())}
    if delegation and "delegated_nodes" in delegation:
        out["delegated_nodes"] = delegation["delegated_nodes"]
        out["delegated_nodes_per_layer"] = delegation["delegated_nodes"] / layers
    return out


def raw_stepper(session) -> Any:
    """The runtime's own call on the backend's loaded step graph, the state carried from call to call."""
    tokens = np.array([5], np.int64)
    state = session.init_state(1).tensors
    backend = session.backend
    if getattr(backend, "library", None) is not None:
        # the C function with its arguments made once (the backend's own fields: this is its raw call)
        buffers, (shared, _) = backend._new_state(1)
        table = shared.copy()               # the backend reuses its tables; the session's calls run in between
        for dst, src in zip(buffers, state):
            dst[...] = src
        logits = np.empty(backend.vocab_size, np.float32)
        ids = np.array([5], np.int64)
        args = (backend._model, ids.ctypes.data, 1, table.ctypes.data, table.ctypes.data, logits.ctypes.data,
                backend.vocab_size)
        run = backend._run

        def call(_alive=(buffers, table, ids, logits)) -> None:     # what the addresses point at stays alive
            if run(*args):
                raise RuntimeError(f"seqedge_run_buffers failed: {backend._lib.seqedge_last_error().decode()}")
        return call
    if session.runtime.startswith("onnxruntime"):
        sess = backend.sessions["step"]
        feeds = {"tokens": tokens, **{s.name: a for s, a in zip(session.specs, state)}}
        names = [s.name for s in session.specs]

        def call() -> None:
            out = sess.run(None, feeds)
            feeds.update(zip(names, out[1:]))
        return call
    import torch

    method = backend.methods["step"]
    inputs = [torch.from_numpy(tokens), *(torch.from_numpy(a) for a in state)]

    def call() -> None:
        out = method.execute(inputs)
        inputs[1:] = out[1:]        # execute returns copies of the program's output buffers: fed back as they are
    return call


def interleaved(calls: dict[str, Any], n: int, warmup: int = 50) -> dict[str, float]:
    """p50 (ms) of each call, timed in turn call by call ``n`` times (after ``warmup`` rounds)."""
    times = {k: [] for k in calls}
    for i in range(warmup + n):
        for k, call in calls.items():
            t0 = time.perf_counter_ns()
            call()
            if i >= warmup:
                times[k].append(time.perf_counter_ns() - t0)
    return {k: float(np.median(v)) / 1e6 for k, v in times.items()}


def in_blocks(calls: dict[str, Any], n: int, block: int = LOOP_BLOCK, warmup: int = 20) -> dict[str, float]:
    """p50 (ms) of each call over ``n`` timed calls made in blocks of ``block`` consecutive calls of one kind
    (each block after ``warmup`` untimed calls); the kinds' blocks take turns in a fresh random order each round."""
    times: dict[str, list[int]] = {k: [] for k in calls}
    rng = np.random.default_rng(0)
    for _ in range(max(1, -(-n // block))):
        for k in rng.permutation(list(calls)):
            call = calls[k]
            for _ in range(warmup):
                call()
            for _ in range(block):
                t0 = time.perf_counter_ns()
                call()
                times[k].append(time.perf_counter_ns() - t0)
    return {k: float(np.median(v)) / 1e6 for k, v in times.items()}


def measure(artifact: Path, runtime: str, quantization: str, steps: int, limits,
            library: Path | None = None) -> dict[str, Any]:
    manifest = read_manifest(artifact)
    variant = manifest.variant(RUNTIMES[runtime], quantization)
    layers = manifest.config.num_layers
    lib = {} if library is None else {"library": library}
    session = seqedge.load(artifact, runtime, quantization=quantization, **lib)
    state = [session.init_state(1)]
    tokens = np.array([5])

    donated = [session.init_state(1)]

    def session_call() -> None:
        state[0] = session.step(tokens, state[0])[1]

    def donated_call() -> None:
        donated[0] = session.step(tokens, donated[0], donate=True)[1]
    calls = {"raw": raw_stepper(session), "session": session_call, "donated": donated_call}
    if runtime != "executorch":
        other = 2 if session.backend.threads == 1 else 1
        calls[f"raw_{other}_threads"] = raw_stepper(seqedge.load(artifact, runtime, quantization=quantization,
                                                                 threads=other))
    p50 = interleaved(calls, steps)
    loop = in_blocks({k: calls[k] for k in ("raw", "session", "donated")}, steps)
    threads = session.describe().get("threads")
    if runtime == "executorch":
        # XNNPACK's pool is resized only while no program is loaded: this variant's session goes first
        other = 2 if threads == 1 else 1
        del calls, session, state, donated
        gc.collect()
        try:
            session = seqedge.load(artifact, runtime, quantization=quantization, threads=other, **lib)
        except ValueError as err:           # the library runs on the calling thread or ExecuTorch's whole pool
            print(f"no {other}-thread pass: {err}", flush=True)
        else:
            p50.update(interleaved({f"raw_{other}_threads": raw_stepper(session)}, steps))
    step_path = manifest.path(variant, "program" if runtime == "executorch" else "step")
    row = {"artifact": str(artifact), "runtime": runtime if library is None else f"{runtime} (libseqedge)",
           "variant": variant.name,
           "threads": threads, "p50_ms": p50, "loop_p50_ms": loop,
           "overhead": p50["session"] / p50["raw"] - 1, "loop_overhead": loop["session"] / loop["raw"] - 1,
           "nodes": pte_counts(step_path, layers, variant.info.get("delegation", {}).get("step"))
           if runtime == "executorch" else ort_counts(step_path, layers)}
    floor = step_floor(step_weight_bytes(variant), state_nbytes(manifest.state_specs, 1),
                       step_flops(manifest.config), limits)
    row["floor"] = {**floor, "session_over_floor": p50["session"] / floor["floor_ms"],
                    "donated_over_floor": p50["donated"] / floor["floor_ms"],
                    "loop_donated_over_floor": loop["donated"] / floor["floor_ms"]}
    if runtime != "executorch":
        row["profile_us_per_step"] = ort_profile(step_path, session.backend.threads
                                                 if isinstance(session.backend.threads, int) else 0)
    return row


def measure_native(runner: Path, artifact: Path, quantization: str, steps: int) -> dict[str, Any]:
    """The C++ runner's step p50/p99 at context 0 (``steps`` consecutive steps after 50 untimed), at its default
    thread choice and at the other of 1 and this machine's core count (ExecuTorch's pool), where it runs."""
    from seqedge.evaluate.latency import BenchConfig, token_stream
    from seqedge.evaluate.native_runner import consumed_tokens, run_bench_json

    config = BenchConfig(contexts=(0,), steps=steps, warmup=50, prefill_tokens=64, stepwise_tokens=64,
                         ttft_prompt=8)
    stream = token_stream(consumed_tokens(config), vocab_size=read_manifest(artifact).vocab_size)

    def run(threads: int | None) -> dict[str, Any]:
        try:
            report = run_bench_json(runner, artifact, quantization, config, stream, threads=threads)
        except RuntimeError as err:        # a count the runner cannot give here (its pool has another size)
            return {"threads": threads, "error": str(err)}
        row = report["contexts"][0]
        return {"threads": report["threads"], "p50_ms": row["p50_ms"], "p99_ms": row["p99_ms"]}

    runs = [run(None)]
    chosen = runs[0]["threads"]
    other = (os.cpu_count() or 1) if chosen == 1 else 1
    if other != chosen:
        runs.append(run(other))
    return {"artifact": str(artifact), "variant": f"executorch/{quantization}", "runner": str(runner), "runs": runs}


def render(rows: list[dict[str, Any]], limits, machine: dict[str, Any], command: str, date: str,
           native: list[dict[str, Any]]) -> str:
    out = ["# Session.step over the raw runtime call, node counts and the floor (bundled model, batch 1)", "",
           f"- Date: {date}", f"- Command: `{command}`", machine_markdown(machine),
           "- Limits measured here: copy bandwidth (GB/s) by working set " + ", ".join(
               f"{k >> 20} MiB {v / 1e9:.1f}" for k, v in sorted(limits.bandwidth_by_bytes.items()))
           + f"; peak {limits.peak_flops / 1e9:.1f} GFLOP/s ({limits.method})",
           "- Interleaved: raw call, Session.step and the donated step timed in turn call by call (p50 of each), so "
           "load from other processes hits all alike, but every call runs after the other kinds' code and data. "
           f"Decode loop: the same calls in blocks of {LOOP_BLOCK} consecutive calls of one kind, as a decode loop "
           "makes them (the kinds' blocks alternate). The p50 target is checked on the loop's donated step; the "
           "overhead target both ways. Absolute times on a loaded machine are higher than on a quiet one.", "",
           "## Node counts of the step graph (per layer = total / layers)", "",
           "| artifact | runtime | variant | nodes written | per layer | after ORT's optimiser (ONNX) / delegated "
           "(ExecuTorch) | per layer |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        n = r["nodes"]
        if "after_ort" in n:
            after = f"{n['after_ort']} | {n['after_ort_per_layer']:.1f}"
        elif "delegated_nodes" in n:
            after = (f"{n['delegated_nodes']} in {n['delegate_calls']} XNNPACK delegate calls | "
                     f"{n['delegated_nodes_per_layer']:.1f}")
        else:
            after = f"{n['delegate_calls']} delegate calls | -"
        out.append(f"| {Path(r['artifact']).name} | {r['runtime']} | {r['variant']} | {n['written']} | "
                   f"{n['written_per_layer']:.1f} | {after} |")
    out += ["", "## Step latency", "",
            "| artifact | runtime | variant | threads | interleaved: raw / Session.step / donated p50 ms | overhead | "
            "decode loop: raw / Session.step / donated p50 ms | overhead | raw p50, other thread count | floor ms | "
            "loop donated / floor | target |",
            "|" + "---|" * 12]
    for r in rows:
        p = r["p50_ms"]
        other = next((f"{v:.3f} ({k.split('_')[1]} threads)" for k, v in p.items() if k.startswith("raw_")), "-")
        target = []
        loop = r["loop_p50_ms"]
        if r["runtime"].split(" ")[0] in ("onnxruntime-fused", "executorch"):
            miss = loop["donated"] / TARGET_MS
            target.append(f"p50 <= {TARGET_MS} ms: " + ("met" if miss <= 1 else f"missed, {miss:.2f}x"))
        over = {"interleaved": r["overhead"], "loop": r["loop_overhead"]}
        missed = [k for k, v in over.items() if v > TARGET_OVERHEAD]
        target.append(f"overhead <= {TARGET_OVERHEAD:.0%}: " + (f"missed ({', '.join(missed)})" if missed
                                                                else "met"))
        out.append(f"| {Path(r['artifact']).name} | {r['runtime']} | {r['variant']} | {r['threads']} | "
                   f"{p['raw']:.3f} / {p['session']:.3f} / {p['donated']:.3f} | {r['overhead']:+.1%} | "
                   f"{loop['raw']:.3f} / {loop['session']:.3f} / {loop['donated']:.3f} | {r['loop_overhead']:+.1%} | "
                   f"{other} | {r['floor']['floor_ms']:.4f} | {r['floor']['loop_donated_over_floor']:.0f}x | "
                   f"{'; '.join(target)} |")
    if native:
        out += ["", "## ExecuTorch's step in the C++ runner (`seqedge-run --bench`, its own process, consecutive "
                "steps at context 0)", "",
                "| artifact | variant | threads | p50 ms | p99 ms | other thread count: p50 ms | target |",
                "|---|---|---|---|---|---|---|"]
        for n in native:
            first, *rest = n["runs"]
            if "error" in first:
                out.append(f"| {Path(n['artifact']).name} | {n['variant']} | - | - | - | - | {first['error']} |")
                continue
            other = "; ".join(f"{r['p50_ms']:.3f} ({r['threads']} threads)" if "error" not in r
                              else f"{r['threads']} threads refused" for r in rest) or "-"
            miss = first["p50_ms"] / TARGET_MS
            target = f"p50 <= {TARGET_MS} ms: " + ("met" if miss <= 1 else f"missed, {miss:.2f}x")
            out.append(f"| {Path(n['artifact']).name} | {n['variant']} | {first['threads']} | {first['p50_ms']:.3f} | "
                       f"{first['p99_ms']:.3f} | {other} | {target} |")
    out += ["", "## Where an onnxruntime step goes (profiler: share of kernel time by op type, top 8; the "
            "profiler's own cost inflates absolute times)", ""]
    for r in rows:
        if "profile_us_per_step" in r:
            prof = r["profile_us_per_step"]
            total = sum(prof.values())
            top = ", ".join(f"{op} {us / total:.0%}" for op, us in list(prof.items())[:8])
            out.append(f"- {Path(r['artifact']).name} {r['runtime']} {r['variant']}: {top}")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", action="append", required=True, type=Path,
                        help="artifact directory (repeatable: each is measured on every runtime it holds)")
    parser.add_argument("--quantize", default="fp32,int8",
                        help="variants to measure where an artifact holds them, comma-separated (default: "
                             "%(default)s)")
    parser.add_argument("--steps", type=int, default=2000, help="timed calls of each kind (default: %(default)s)")
    parser.add_argument("--runner", type=Path, default=None,
                        help="seqedge-run (runners/cpp): also time the executorch variants' step in the C++ runner")
    parser.add_argument("--library", type=Path, default=None,
                        help="libseqedge.so (runners/cpp): also time the executorch variants through a Python "
                             "session on it")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/step_overhead"),
                        help="output stem: <stem>.json and <stem>.md (default: %(default)s)")
    args = parser.parse_args()
    date = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    machine, command, limits = machine_info(), command_line(), measure_limits()
    for flag, path in (("--runner", args.runner), ("--library", args.library)):
        if path is not None and not path.is_file():
            parser.error(f"{flag} {path} does not exist (build it: README.md, 'Native runner (C++)')")
    rows, native = [], []
    for artifact in args.artifact:
        held = {(v.target, v.tag) for v in read_manifest(artifact).variants}
        for runtime, target in RUNTIMES.items():
            for quantization in args.quantize.split(","):
                if (target, quantization) in held:
                    print(f"measuring {runtime} {quantization} on {artifact}", flush=True)
                    rows.append(measure(artifact, runtime, quantization, args.steps, limits))
                    if runtime == "executorch" and args.library is not None:
                        print(f"measuring {artifact} executorch/{quantization} through {args.library}", flush=True)
                        rows.append(measure(artifact, runtime, quantization, args.steps, limits, args.library))
                    if runtime == "executorch" and args.runner is not None:
                        print(f"measuring the C++ runner on {artifact} executorch/{quantization}", flush=True)
                        native.append(measure_native(args.runner, artifact, quantization, args.steps))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"date": date, "command": command, "machine": machine, "limits": limits.to_dict(), "rows": rows,
         "native": native},
        indent=2) + "\n")
    text = render(rows, limits, machine, command, date, native)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
