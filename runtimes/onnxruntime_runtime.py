"""ONNX Runtime: one ``InferenceSession`` per entry point of an ``onnx`` variant.

On the CPU a call is the plain ``InferenceSession.run``: the numpy state is read in place and the new state comes
back in arrays ONNX Runtime allocated for it, so no state tensor is copied between steps. With the CUDA provider
the state stays on the GPU through IOBinding: when the next call passes exactly the arrays the last one returned
(the usual step loop), their ``OrtValue``s are bound as inputs again; any other valid state (a fresh one, one
loaded from disk, one from another runtime) is bound from numpy; the arrays handed back are host copies.
A donated step on the CPU (``step_donated``: ``Session.step(..., donate=True)``, ``generate``) runs over state
buffers the backend owns and binds once, updating in place what the export marked safe
(:mod:`seqedge.runtimes.ort_step_chain`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Collection
from typing import Any

import numpy as np

from seqedge.artifact import CHUNK_LOGITS_FROM, Manifest, Variant

from .base import RuntimeUnavailable
from .ort_step_chain import StepChain, in_place_agrees
from .signature import TensorSig, check_signature
from .threads import check_threads, default_threads

INSTALL_HINT = "pip install onnxruntime  (or pip install 'seqedge[onnx]'; onnxruntime-gpu for CUDA)"
LAST_ROW = np.array([-1], np.int64)     # CHUNK_LOGITS_FROM for the last position's logits only
log = logging.getLogger("seqedge.runtimes")


def _ort():
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(f"the onnxruntime runtime needs onnxruntime, which is not installed ({err}); run: "
                          f"{INSTALL_HINT}") from None
    return onnxruntime


class OnnxRuntimeBackend:
    runtime = "onnxruntime"
    target = "onnx"

    def __init__(self, sessions: dict[str, Any], providers: list[str], state_names: list[str],
                 io_binding: bool | None = None, in_place: Collection[str] = ()) -> None:
        self._ort = _ort()
        self.sessions = sessions
        self.providers = providers
        self.device = "cuda" if providers[0] == "CUDAExecutionProvider" else "cpu"
        self.io_binding = self.device == "cuda" if io_binding is None else bool(io_binding)
        self.state_names = state_names
        self.out_names = [f"new_{n}" for n in state_names]
        self._outputs = ["logits", *self.out_names]
        self._last: list[tuple[np.ndarray, Any]] = []   # (array handed out, its OrtValue) of the last call
        self.reused_state_binds = 0                    # how many calls re-bound the previous call's OrtValues
        self.threads: int | str = "onnxruntime default"          # the step's intra-op threads
        self.chunk_threads: int | str = "onnxruntime default"
        # entry -> (session, inputs fed beside tokens and state): "chunk_last" is the chunk graph with its head on
        # the last row (graphs exported before the head's rows could be chosen have no such input)
        self._graphs: dict[str, tuple[Any, dict[str, np.ndarray]]] = {e: (s, {}) for e, s in sessions.items()}
        if CHUNK_LOGITS_FROM in {i.name for i in sessions["chunk"].get_overridable_initializers()}:
            self._graphs["chunk_last"] = (sessions["chunk"], {CHUNK_LOGITS_FROM: LAST_ROW})
        self.entries = tuple(self._graphs)
        # donated steps (step_donated): the states the export listed as safe to update in place, checked against
        # a plain run before the first chain writes in place
        self.in_place = frozenset(in_place)
        self._in_place_checked = not self.in_place
        self._chain: StepChain | None = None
        self._chain_lock = threading.Lock()     # one chain per backend: donated steps from two threads take turns

    def _bind_state(self, io, state: list[np.ndarray]) -> None:
        reuse = len(self._last) == len(state) and all(a is b for a, (b, _) in zip(state, self._last))
        if reuse:
            self.reused_state_binds += 1
        for i, (name, arr) in enumerate(zip(self.state_names, state)):
            if reuse:
                io.bind_ortvalue_input(name, self._last[i][1])
            elif self.device == "cpu":
                io.bind_cpu_input(name, np.ascontiguousarray(arr, dtype=np.float32))
            else:
                io.bind_ortvalue_input(name, self._ort.OrtValue.ortvalue_from_numpy(
                    np.ascontiguousarray(arr, dtype=np.float32), "cuda", 0))

    def run(self, entry: str, tokens: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        try:
            sess, extra = self._graphs[entry]
        except KeyError:
            raise ValueError(f"unknown entry point {entry!r}; valid ones are {list(self.entries)}") from None
        if not self.io_binding:
            # the plain run: numpy inputs are wrapped without a copy and the outputs come back as new arrays, so
            # IOBinding saves nothing on the CPU, and its per-call binding calls cost more than the run's wrapping
            feeds = dict(zip(self.state_names, state), tokens=tokens, **extra)
            logits, *arrays = sess.run(self._outputs, feeds)
            for a in arrays:
                a.flags.writeable = False            # a state is never modified in place (see Session)
            return logits, arrays
        io = sess.io_binding()
        io.bind_cpu_input("tokens", np.ascontiguousarray(tokens, dtype=np.int64))
        for name, value in extra.items():
            io.bind_cpu_input(name, value)
        self._bind_state(io, state)
        io.bind_output("logits", "cpu")
        for name in self.out_names:
            io.bind_output(name, self.device)
        sess.run_with_iobinding(io)
        values = io.get_outputs()
        logits = values[0].numpy()
        arrays = [v.numpy() for v in values[1:]]     # CPU: views of the OrtValues; CUDA: host copies
        for a in arrays:
            a.flags.writeable = False                # a state is never modified in place (see Session)
        self._last = list(zip(arrays, values[1:]))
        return logits, arrays

    def step_donated(self, tokens: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """``run("step", ...)`` for a state its caller gave up: on the CPU (without the ``io_binding`` option,
        whose own binding path runs instead) the step runs over this backend's own state buffers
        (:class:`~seqedge.runtimes.ort_step_chain.StepChain`), which the returned state is; a state that is not
        the last one returned is copied into new buffers first."""
        if self.io_binding:
            return self.run("step", tokens, state)
        sess = self.sessions["step"]
        with self._chain_lock:
            chain = self._chain
            if chain is None or chain.batch_size != len(tokens) or not chain.holds(state):
                if not self._in_place_checked:
                    self._in_place_checked = True
                    if not in_place_agrees(sess, self.state_names, state, self.in_place):
                        log.warning("seqedge: ONNX Runtime %s's kernels give other results when a state is updated "
                                    "in place; donated steps keep every state apart", self._ort.__version__)
                        self.in_place = frozenset()
                chain = self._chain = StepChain(sess, self.state_names, state, self.in_place)
            return chain.step(sess, tokens)

    def describe(self) -> dict[str, Any]:
        return {"providers": self.providers, "device": self.device, "onnxruntime": self._ort.__version__,
                "threads": self.threads, "chunk_threads": self.chunk_threads, "io_binding": self.io_binding,
                "in_place_states": f"{len(self.in_place)} of {len(self.state_names)}"}


class OnnxRuntimeRuntime:
    runtime = "onnxruntime"
    target = "onnx"
    backend = OnnxRuntimeBackend
    # The portable graph's step (the scan as matrix products, the conv as Conv) shares well over the cores even
    # for a small model; the fused graph's small step does not (runtimes/threads.py)
    one_thread_for_small_steps = False

    def check_available(self) -> None:
        _ort()

    def open(self, manifest: Manifest, variant: Variant, *, providers: list[str] | None = None,
             threads: int | None = None, io_binding: bool | None = None, **options: Any) -> OnnxRuntimeBackend:
        if options:
            raise ValueError(f"unknown option(s) {sorted(options)} for onnxruntime; valid: providers, threads "
                             "(intra-op threads; default: one per core, but 1 for a small model's step in the "
                             "fused graphs), io_binding (default: on with CUDA only)")
        ort = _ort()
        available = ort.get_available_providers()
        if providers is None:
            providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in available
                         else ["CPUExecutionProvider"])
        missing = [p for p in providers if p not in available]
        if missing:
            raise RuntimeUnavailable(f"onnxruntime provider(s) {missing} are not available here (available: "
                                     f"{available}); install onnxruntime-gpu for CUDAExecutionProvider")
        threads = check_threads(threads)
        # a small model's fused step runs faster on one thread (runtimes/threads.py); a chunk is chunk_size steps'
        # work, enough to share, so it keeps ONNX Runtime's default (one thread per core) unless threads are asked
        small = default_threads(manifest.config) if self.one_thread_for_small_steps else None
        per_entry = {"step": small if threads is None else threads, "chunk": threads}
        for data in ("weights", "step.data", "chunk.data"):      # external data: hash-checked before the graphs
            if data in variant.files:
                manifest.path(variant, data)
        sessions = {entry: ort.InferenceSession(str(manifest.path(variant, entry)), _options(ort, per_entry[entry]),
                                                providers=providers)
                    for entry in ("step", "chunk")}
        for entry, session in sessions.items():
            check_signature(manifest, entry, manifest.path(variant, entry, verify=False), _sigs(session.get_inputs()),
                            _sigs(session.get_outputs()))
        backend = self.backend(sessions, sessions["step"].get_providers(), [s.name for s in manifest.state_specs],
                               io_binding, variant.info.get("step_in_place_states", ()))
        backend.threads, backend.chunk_threads = (per_entry[e] or f"onnxruntime default ({os.cpu_count()} cores)"
                                                  for e in ("step", "chunk"))
        return backend


def _options(ort: Any, threads: int | None) -> Any:
    """Session options: every graph optimisation, warnings off, ``threads`` intra-op threads (None: ONNX Runtime's
    default)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


ORT_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32",
             "tensor(float16)": "float16", "tensor(double)": "float64"}


def _sigs(args) -> list[TensorSig]:
    """ORT's NodeArgs as TensorSigs (symbolic dims -> None, unknown element types kept as ORT spells them)."""
    return [TensorSig(a.name, tuple(d if isinstance(d, int) else None for d in a.shape),
                      ORT_TYPES.get(a.type, a.type)) for a in args]


class OnnxRuntimeFusedBackend(OnnxRuntimeBackend):
    runtime = "onnxruntime-fused"
    target = "onnx-ort"


class OnnxRuntimeFusedRuntime(OnnxRuntimeRuntime):
    """ONNX Runtime on the ``onnx-ort`` graphs (the scan as ``com.microsoft::LinearAttention``)."""

    runtime = "onnxruntime-fused"
    target = "onnx-ort"
    backend = OnnxRuntimeFusedBackend
    one_thread_for_small_steps = True
