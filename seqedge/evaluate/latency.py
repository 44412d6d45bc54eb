"""Per-token latency of a step function, measured the same way for every runtime (and for baselines).

What is measured for one runtime/variant (:func:`bench_stepper`):

- per-token ``step`` latency p50/p90/p99 after reaching each context length by prefill (it must not grow);
- prefill tokens/s through the chunk path vs token-by-token tokens/s through ``step``;
- time to first token: a fresh state, a prompt prefilled, the first token picked (argmax);
- memory: the state (or cache) bytes held and the process RSS at each context, and the peak RSS of the run;
- the artifact size of the variant and the machine it ran on (:mod:`seqedge.evaluate.latency_report`).

The harness drives anything with the small :class:`Stepper` interface; :class:`SessionStepper` adapts a
:class:`~seqedge.runtimes.Session`, benchmarks/transformer_kv_onnx.py adapts the KV-cache transformer baseline.
Torch-free, like every runtime module. Token streams are real text (the Python standard library's source bytes),
so the state holds realistic values all along the stream.
"""

from __future__ import annotations

import re
import sys
import sysconfig
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from seqedge.state import State

from .bench_results import (  # noqa: F401  re-exported: the public names of the latency API
    BenchConfig, ContextResult, RunResult, format_context, parse_contexts)

# --- token streams --------------------------------------------------------------------------------------------
def token_stream(n: int, source: str | Path | None = None, *, vocab_size: int | None = None) -> np.ndarray:
    """``n`` byte tokens ``[n]`` int64 of real text: the .py files under ``source`` (default: the running Python's
    standard library) concatenated in sorted order, repeated if too short. Deterministic for a given Python.
    A model with fewer than 256 ids (``vocab_size``) gets them modulo its size: timing needs valid ids only."""
    root = Path(source) if source is not None else Path(sysconfig.get_paths()["stdlib"])
    out = bytearray()
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    for path in files:
        try:
            out += path.read_bytes()
        except OSError:
            continue
        if len(out) >= n:
            break
    if not out:
        raise FileNotFoundError(f"no .py files under {root} to build a token stream from")
    reps = -(-n // len(out))
    ids = np.frombuffer(bytes(out) * reps, dtype=np.uint8)[:n].astype(np.int64)
    return ids % vocab_size if vocab_size is not None and vocab_size < 256 else ids


# --- memory ---------------------------------------------------------------------------------------------------
def current_rss_bytes() -> int:
    """Resident set size of this process now (psutil)."""
    import psutil

    return psutil.Process().memory_info().rss


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0: write 5 to /proc/self/clear_refs).

    Returns False where that is impossible; :func:`peak_rss_bytes` is then the process's lifetime peak.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size since the last :func:`reset_peak_rss` (else since the process started).

    Read from /proc where it can be reset (psutil reports no resettable peak), else from getrusage."""
    try:
        with open("/proc/self/status") as f:
            match = re.search(r"VmHWM:\s+(\d+)\s+kB", f.read())
        if match:
            return int(match.group(1)) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)   # bytes on macOS, KiB on Linux


# --- what the harness drives ----------------------------------------------------------------------------------
class Stepper(Protocol):
    """A model with a state that the harness advances, one prefill or one step at a time (batch 1)."""

    name: str

    def reset(self) -> None:
        """Back to a fresh state (context 0)."""

    def prefill(self, tokens: np.ndarray) -> np.ndarray | None:
        """Consume ``tokens`` ``[T]``; the logits ``[V]`` after the last one (None when T == 0)."""

    def step(self, token: int) -> np.ndarray:
        """Consume one token; its logits ``[V]``."""

    def memory_bytes(self) -> int:
        """Bytes of state (or KV cache) held now."""

    def describe(self) -> dict[str, Any]:
        """What runs (runtime, provider, variant, threads) for the report."""


class SessionStepper:
    """A :class:`~seqedge.runtimes.Session` seen as a :class:`Stepper` (prefill = chunk calls, then steps)."""

    def __init__(self, session: Any, name: str | None = None) -> None:
        self.session = session
        self.name = name or f"{session.runtime}/{session.variant.tag}"
        self.chunk_size = session.chunk_size
        self.state: State = session.init_state(1)

    def reset(self) -> None:
        self.state = self.session.init_state(1)

    def prefill(self, tokens: np.ndarray) -> np.ndarray | None:
        if len(tokens) == 0:
            return None
        logits, self.state = self.session.prefill(np.asarray(tokens, np.int64)[None], self.state, logits="last")
        return logits[0]

    def step(self, token: int) -> np.ndarray:
        # the stepper owns its state: donated, as a decode loop gives each state up
        logits, self.state = self.session.step(np.asarray([token], np.int64), self.state, donate=True)
        return logits[0]

    def memory_bytes(self) -> int:
        return int(sum(np.asarray(t).nbytes for t in self.state.numpy()))

    def describe(self) -> dict[str, Any]:
        return self.session.describe()


# --- results --------------------------------------------------------------------------------------------------
def latency_stats(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50/p90/p99/mean/min and the interquartile range (``iqr_ms``, p75 - p25) in milliseconds of per-call
    times in nanoseconds (numpy linear percentiles)."""
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if ms.size == 0:
        raise ValueError("no latency samples")
    p25, p50, p75, p90, p99 = np.percentile(ms, [25, 50, 75, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(ms.mean()),
            "min_ms": float(ms.min()), "iqr_ms": float(p75 - p25)}


Progress = Callable[[int, str], None]     # (tokens just consumed, phase) -> None


def _timed_steps(stepper: Stepper, tokens: Iterable[int], progress: Progress, phase: str) -> list[int]:
    times, logits = [], None
    for token in tokens:
        start = time.perf_counter_ns()
        logits = stepper.step(int(token))
        times.append(time.perf_counter_ns() - start)
        progress(1, phase)
    if logits is not None and not np.isfinite(logits).all():
        raise RuntimeError(f"{stepper.name}: non-finite logits during {phase}")
    return times


def _timed_prefill(stepper: Stepper, tokens: np.ndarray, progress: Progress, phase: str,
                   piece: int = 4096) -> float:
    """Prefill in pieces of about ``piece`` tokens (so progress moves); returns the seconds spent inside prefill.

    The piece is a multiple of the stepper's chunk size, so splitting never changes how many chunk calls run.
    """
    chunk = int(getattr(stepper, "chunk_size", 1))
    piece = max(chunk, piece - piece % chunk)
    spent = 0.0
    for start in range(0, len(tokens), piece):
        part = tokens[start:start + piece]
        t0 = time.perf_counter()
        logits = stepper.prefill(part)
        spent += time.perf_counter() - t0
        progress(len(part), phase)
        if logits is not None and not np.isfinite(logits).all():
            raise RuntimeError(f"{stepper.name}: non-finite logits during {phase}")
    return spent


def total_tokens(config: BenchConfig) -> int:
    """Tokens one :func:`bench_stepper` run consumes (for progress bars)."""
    return (config.ttft_prompt + config.prefill_tokens + config.stepwise_tokens
            + config.sweeps * (config.stream_length() - 1))


def _context_sweep(stepper: Stepper, config: BenchConfig, stream: np.ndarray, progress: Progress,
                   label: str) -> list[ContextResult]:
    """One pass over the contexts from a fresh state: prefill up to each, warm-up steps, timed steps."""
    stepper.reset()
    pos, results = 0, []
    for context in config.contexts:
        reach_tokens = context - pos
        reach_s = _timed_prefill(stepper, stream[pos:context], progress,
                                 f"prefill to {format_context(context)}{label}")
        pos = context
        _timed_steps(stepper, stream[pos:pos + config.warmup], progress, "warmup")
        pos += config.warmup
        times = _timed_steps(stepper, stream[pos:pos + config.steps], progress,
                             f"steps @{format_context(context)}{label}")
        pos += config.steps
        results.append(ContextResult(context=context, **latency_stats(times), reach_s=reach_s,
                                     reach_tokens=reach_tokens, memory_bytes=stepper.memory_bytes(),
                                     rss_bytes=current_rss_bytes()))
    return results


def bench_stepper(stepper: Stepper, config: BenchConfig, stream: np.ndarray | None = None,
                  progress: Progress | None = None, *, kind: str = "seqedge", measure_prefill: bool = True
                  ) -> RunResult:
    """Measure one stepper (see the module docstring). ``stream``: the token ids fed ``[N]`` (default: stdlib text).

    ``measure_prefill=False`` for a stepper whose ``prefill`` only fills its memory synthetically (the KV-cache
    baseline): time to first token and prefill tokens/s are then not measured (None), the rest is.

    """
    progress = progress or (lambda n, phase: None)
    need = max(config.stream_length(), config.prefill_tokens, config.stepwise_tokens, config.ttft_prompt)
    stream = token_stream(need) if stream is None else np.asarray(stream, np.int64)
    if len(stream) < need:
        raise ValueError(f"token stream has {len(stream)} tokens, the benchmark needs {need}")
    rss_before = current_rss_bytes()
    reset_peak_rss()

    ttft = prefill_rate = None
    if measure_prefill:
        # time to first token: fresh state, prompt through prefill, first token chosen
        stepper.reset()
        t0 = time.perf_counter()
        logits = stepper.prefill(stream[:config.ttft_prompt])
        int(np.argmax(logits))
        ttft = (time.perf_counter() - t0) * 1e3
        progress(config.ttft_prompt, "ttft")
        # prefill (chunk path), from a fresh state
        stepper.reset()
        prefill_rate = config.prefill_tokens / _timed_prefill(stepper, stream[:config.prefill_tokens], progress,
                                                              "prefill")
    else:
        progress(config.ttft_prompt + config.prefill_tokens, "no prefill")
    # token by token, from a fresh state
    stepper.reset()
    stepwise_ns = _timed_steps(stepper, stream[:config.stepwise_tokens], progress, "token-by-token")

    # the context sweep: one stream, prefilled up to each context, then timed steps; with several sweeps, each
    # context keeps the pass with the lowest p50 (another process on the machine can only slow a pass down, so
    # the ratio between contexts then compares undisturbed passes)
    sweeps: list[list[ContextResult]] = []
    for sweep in range(config.sweeps):
        label = f" (sweep {sweep + 1}/{config.sweeps})" if config.sweeps > 1 else ""
        sweeps.append(_context_sweep(stepper, config, stream, progress, label))
    results = [min(rows, key=lambda c: c.p50_ms) for rows in zip(*sweeps)]
    for i, row in enumerate(results):
        row.sweep_p50_ms = [s[i].p50_ms for s in sweeps]
    return RunResult(
        name=stepper.name, kind=kind, contexts=results, ttft_ms=ttft, prefill_tokens_per_s=prefill_rate,
        stepwise_tokens_per_s=config.stepwise_tokens / (sum(stepwise_ns) / 1e9),
        peak_rss_bytes=peak_rss_bytes(), rss_before_bytes=rss_before, info=dict(stepper.describe()))


# --- artifacts ------------------------------------------------------------------------------------------------
@dataclass
class Skipped:
    """A runtime (or variant) that was not measured, and why: it cannot run here, or it failed (``failed``)."""

    name: str
    reason: str
    failed: bool = False


def variant_bytes(variant: Any) -> int:
    """Bytes of a variant's files (as recorded in the manifest)."""
    return int(sum(int(rec.get("bytes", 0)) for rec in variant.files.values()))


def _runtime_target(runtime: str, runner: str | Path | None) -> str:
    """The export target whose variants ``runtime`` runs; raises where it cannot run here (with why)."""
    from seqedge.evaluate.native_runner import NATIVE_RUNTIMES, find_runner
    from seqedge.quiet import quiet_libraries
    from seqedge.runtimes.base import get_runtime

    if runtime in NATIVE_RUNTIMES:
        find_runner(runner)
        return NATIVE_RUNTIMES[runtime]
    with quiet_libraries():
        factory = get_runtime(runtime)
        factory.check_available()
    return factory.target


def plan_runs(artifact_dir: str | Path, runtimes: Sequence[str] | None = None,
              quantizations: Sequence[str] | None = None, runner: str | Path | None = None
              ) -> tuple[list[tuple[str, Any]], list[Skipped]]:
    """Which (runtime, variant) pairs of the artifact can run here, and which cannot with the reason.

    ``runtimes``: names from :data:`seqedge.runtimes.RUNTIMES`, a native runner's name (``executorch-cpp``:
    :mod:`seqedge.evaluate.native_runner`, whose binary is ``runner`` or found there) or a target name that
    names its runtime (:func:`seqedge.targets.resolve_runtime`; default: all); an unknown name raises ValueError.
    ``quantizations``: recipe names or variant tags to keep (``fp32``, ``int8-dynamic`` or ``int8``, ...; default:
    all present).
    """
    from seqedge.artifact import read_manifest
    from seqedge.evaluate.native_runner import NATIVE_RUNTIMES
    from seqedge.export.quantization import recipe_tag
    from seqedge.runtimes.base import RUNTIMES
    from seqedge.targets import resolve_runtimes

    known = (*RUNTIMES, *NATIVE_RUNTIMES)
    runtimes = resolve_runtimes(runtimes, known=known)
    tags = None if quantizations is None else {recipe_tag(q) for q in quantizations}
    manifest = read_manifest(artifact_dir)
    runs, skipped = [], []
    for runtime in runtimes or list(known):
        try:
            target = _runtime_target(runtime, runner)
        except (ImportError, RuntimeError, OSError) as err:
            skipped.append(Skipped(runtime, _first_line(err)))
            continue
        variants = [v for v in manifest.variants if v.target == target]
        if tags is not None:
            variants = [v for v in variants if v.tag in tags]
        if not variants:
            have = sorted(v.name for v in manifest.variants)
            wanted = "" if tags is None else f" at {sorted(tags)}"
            skipped.append(Skipped(runtime, f"the artifact has no {target!r} variant{wanted} (it has "
                                            f"{have}); export it with `seqedge export --target {target}`"))
            continue
        runs += [(runtime, v) for v in variants]
    return runs, skipped


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def progress_bar(name: str, total: int, enabled: bool = True) -> tuple[Any, Progress]:
    """A tqdm bar on stderr counting tokens, and the ``Progress`` callback that feeds it (phase as postfix)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=name, unit="tok", disable=not enabled, file=sys.stderr, dynamic_ncols=True)

    def progress(n: int, phase: str) -> None:
        if bar.disable:
            return
        if getattr(bar, "postfix", None) != phase:
            bar.set_postfix_str(phase, refresh=False)
        bar.update(n)

    return bar, progress


def step_weight_bytes(variant: Any) -> int:
    """Bytes of the weights one step reads: what the export recorded (``info["step_weight_bytes"]``: ONNX
    variants count their step graph's initializers, an embedding table one row), else the step entry point's
    files (with its external data), the shared weights file where the variant has one, else the whole variant
    over its entry points."""
    recorded = variant.info.get("step_weight_bytes")
    if recorded:
        return int(recorded)
    files = variant.files
    keys = [k for k in ("weights", "step", "step.data", "program") if k in files]
    if keys:
        return int(sum(int(files[k].get("bytes", 0)) for k in keys))
    return variant_bytes(variant) // max(1, sum(k in files for k in ("step", "chunk")))


def attach_floor(result: RunResult, variant: Any, manifest: Any, limits: Any) -> None:
    """Add ``info["floor"]``: the step floor of ``variant`` on ``limits`` and the measured p50 (shortest context)
    as a multiple of it (:mod:`seqedge.evaluate.floor`)."""
    from seqedge.evaluate.floor import step_floor, step_flops
    from seqedge.state import state_nbytes

    floor = step_floor(step_weight_bytes(variant), state_nbytes(manifest.state_specs, 1),
                       step_flops(manifest.config), limits)
    floor["p50_over_floor"] = result.contexts[0].p50_ms / floor["floor_ms"]
    floor["limits"] = limits.to_dict()
    result.info["floor"] = floor


def measure_run(artifact_dir: str | Path, runtime: str, tag: str, config: BenchConfig, stream: np.ndarray,
                progress: Progress, *, session_options: dict[str, Any] | None = None,
                runner: str | Path | None = None) -> RunResult:
    """One (runtime, variant) measured: a Python session in this process, or a native runner in its own."""
    from seqedge.evaluate.native_runner import NATIVE_RUNTIMES, bench_native, find_runner
    from seqedge.runtimes.session import load

    name = f"{runtime}/{tag}"
    if runtime in NATIVE_RUNTIMES:
        result = bench_native(find_runner(runner), artifact_dir, tag, config, stream, name)
        progress(total_tokens(config), "done in the runner's process")
        return result
    t0 = time.perf_counter()
    session = load(artifact_dir, runtime, quantization=tag, **(session_options or {}))
    load_s = time.perf_counter() - t0
    result = bench_stepper(SessionStepper(session, name), config, stream, progress)
    result.load_s = load_s
    return result


def bench_artifact(artifact_dir: str | Path, config: BenchConfig, runtimes: Sequence[str] | None = None,
                   quantizations: Sequence[str] | None = None, *, show_progress: bool = True,
                   session_options: dict[str, Any] | None = None, limits: Any = None,
                   runner: str | Path | None = None) -> tuple[list[RunResult], list[Skipped]]:
    """Benchmark every runnable (runtime, variant) of an artifact with one token stream; list the rest with why.

    A variant that fails to load or run is listed with its error (``failed=True``); it never stops the others.
    Each result's ``info["floor"]`` reads its p50 against the machine's ``limits`` (measured once here when not
    given: :func:`seqedge.evaluate.floor.measure_limits`). ``runner``: the C++ runner binary for
    ``executorch-cpp`` (:func:`seqedge.evaluate.native_runner.find_runner`).
    """
    from seqedge.artifact import read_manifest
    from seqedge.evaluate.floor import measure_limits

    runs, skipped = plan_runs(artifact_dir, runtimes, quantizations, runner)
    manifest = read_manifest(artifact_dir)
    limits = limits if limits is not None or not runs else measure_limits()
    stream = token_stream(max(config.stream_length(), config.prefill_tokens, config.stepwise_tokens,
                              config.ttft_prompt), vocab_size=manifest.vocab_size)
    results = []
    for runtime, variant in runs:
        name = f"{runtime}/{variant.tag}"
        bar, progress = progress_bar(name, total_tokens(config), show_progress)
        try:
            result = measure_run(artifact_dir, runtime, variant.tag, config, stream, progress,
                                 session_options=session_options, runner=runner)
        except (ImportError, RuntimeError, ValueError, OSError) as err:
            skipped.append(Skipped(name, f"failed: {type(err).__name__}: {_first_line(err)}", failed=True))
            continue
        finally:
            bar.close()
        result.artifact_bytes = variant_bytes(variant)
        attach_floor(result, variant, manifest, limits)
        result.info.setdefault("variant", variant.name)
        results.append(result)
    return results, skipped
