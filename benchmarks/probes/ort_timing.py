"""Shared by the ONNX Runtime probes (and step_overhead.py): CPU sessions, random feeds for a session, sessions
timed in alternating rounds, and a step's time by op type from ONNX Runtime's profiler."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort


def cpu_session(model: str | bytes | os.PathLike, threads: int,
                config: dict[str, str] | None = None) -> ort.InferenceSession:
    """A CPU ``InferenceSession`` of ``model`` (a path or serialized bytes) with ``threads`` intra-op threads,
    one inter-op thread, warnings off and ``config`` as session config entries."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=["CPUExecutionProvider"])


def random_feeds(session: ort.InferenceSession, seed: int = 0, vocab: int | None = None) -> dict[str, np.ndarray]:
    """One array per input: token ids in 1..vocab-1 for integer inputs, small normal values otherwise; symbolic
    dimensions are 1. ``vocab`` by default: 1000, or the graph's vocabulary (its logits' last extent) where that
    is smaller."""
    if vocab is None:
        extents = [o.shape[-1] for o in session.get_outputs() if o.name == "logits" and isinstance(o.shape[-1], int)]
        vocab = min([1000, *extents])
    rng = np.random.default_rng(seed)
    out = {}
    for i in session.get_inputs():
        shape = [1 if not isinstance(d, int) else d for d in i.shape]
        out[i.name] = (rng.integers(1, vocab, shape).astype(np.int64) if "int" in i.type
                       else (rng.standard_normal(shape) * 0.1).astype(np.float32))
    return out


def time_rounds(sessions: dict[str, ort.InferenceSession], feeds: dict[str, np.ndarray], calls: int,
                rounds: int) -> dict[str, list[float]]:
    """Per session, the median ms of ``calls`` runs in each of ``rounds`` rounds; every round times the sessions
    in a new random order, after one warm-up run each."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    rng = np.random.default_rng(1)
    for _ in range(rounds):
        for name in rng.permutation(list(sessions)):
            times[name].append(median_ms(sessions[name], feeds, calls))
    return times


def median_ms(session: ort.InferenceSession, feeds: dict[str, np.ndarray], calls: int, warmup: int = 1) -> float:
    """The median ms of ``calls`` runs of ``session`` on ``feeds``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        session.run(None, feeds)
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        session.run(None, feeds)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def ort_profile(path: Path, threads: int, steps: int = 300) -> dict[str, float]:
    """Microseconds per step by op type, from ONNX Runtime's profiler (ORT_ENABLE_ALL graph, CPU)."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "prof")
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds = {}
        for i in sess.get_inputs():
            shape = [1 if isinstance(d, str) else d for d in i.shape]
            feeds[i.name] = np.array([5], np.int64) if i.name == "tokens" else np.zeros(shape, np.float32)
        for _ in range(steps):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    by_op: Counter = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
    return {op: us / steps for op, us in by_op.most_common()}
