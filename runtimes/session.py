"""``Session``: the same ``init_state / step / prefill / generate`` behaviour over every runtime backend.

Validation happens here, before a backend sees anything, so a bad call raises a clear error and leaves the
session usable. States are never modified in place: each call returns a new ``State``. A state handed in must be
this model's (fingerprint, shapes), of the dtype the backend computes in (never cast silently) and, unless the
call passes ``check_finite=False``, finite: one pass of ``np.isfinite`` over the state, the only per-call check
that is not O(1). A state this session returned itself is accepted back after O(1) checks (its seal: the same
session, the same tensor objects, the batch of the call): it was checked, or computed from checked inputs, and
states are never modified in place (the ONNX Runtime backends return read-only arrays).

The one exception is asked for: ``step(..., donate=True)`` gives the state up, so a backend with
``step_donated`` (ONNX Runtime on the CPU, ExecuTorch) may write the new state over its buffers; the given
``State`` is spent whatever the backend (:meth:`seqedge.state.State.spend`), so a later use raises instead of
reading another state's values. ``generate`` and the steps inside ``prefill`` donate the states they make
themselves, never the caller's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from seqedge.artifact import Manifest, Variant, read_manifest
from seqedge.quiet import quiet_libraries
from seqedge.sampling import Sampler, SamplingConfig
from seqedge.state import State

from .base import Backend, get_runtime
from .huge_pages import HugePages, advise_written_memory

_INT64 = np.dtype(np.int64)


class Session:
    """A loaded artifact on one runtime. Create with :func:`seqedge.runtimes.load`."""

    def __init__(self, manifest: Manifest, variant: Variant, backend: Backend, runtime: str,
                 huge_pages: HugePages | None = None) -> None:
        self.manifest = manifest
        self.variant = variant
        self.backend = backend
        self.runtime = runtime
        self.huge_pages = huge_pages or HugePages(reason="not asked for")
        self.specs = manifest.state_specs
        self.fingerprint = manifest.fingerprint
        self.vocab_size = manifest.vocab_size
        self.chunk_size = manifest.chunk_size
        # float32 (the manifest's) or the backend's own state dtype (the torch runtime's float64 reference)
        self.state_dtypes = sorted({s.dtype for s in self.specs} | {getattr(backend, "state_dtype", "float32")})
        self._tokenizer = None
        self._seal = object()       # identifies this session's own states (State.sealed_successor)
        # a prompt's chunks with the head on their last position only, where the backend can (prefill "last")
        self._last_chunk = "chunk_last" if "chunk_last" in getattr(backend, "entries", ()) else "chunk"
        # a donated step where the backend has one (ONNX Runtime, ExecuTorch), else the plain one
        self._step_donated = getattr(backend, "step_donated", None) or (lambda t, s: backend.run("step", t, s))

    @property
    def tokenizer(self):
        """The artifact's tokenizer (:class:`seqedge.tokenizer.Tokenizer`), loaded and checked on first use."""
        if self._tokenizer is None:
            self._tokenizer = self.manifest.tokenizer()
        return self._tokenizer

    def __repr__(self) -> str:
        return f"Session(runtime={self.runtime!r}, variant={self.variant.name!r}, artifact={str(self.manifest.root)!r})"

    # state ------------------------------------------------------------------------------------------------
    def init_state(self, batch_size: int = 1) -> State:
        """Zero state for ``batch_size`` sequences (float32 numpy arrays in manifest order)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        return State([np.zeros(s.concrete_shape(int(batch_size)), np.float32) for s in self.specs], self.specs,
                     self.fingerprint)

    def _check_state(self, state: State, batch_size: int, check_finite: bool) -> list[np.ndarray]:
        if not isinstance(state, State):
            raise TypeError(f"state must be a seqedge State (from init_state), got {type(state).__name__}")
        if state.sealed_by(self._seal, batch_size):      # never true of a spent state: check() refuses those
            return state.tensors        # the backend's own outputs, as it returned them
        state.check(self.specs, self.fingerprint, batch_size, self.state_dtypes)
        if check_finite:
            state.check_finite()
        return state.arrays()

    def _check_tokens(self, tokens: Any, ndim: int) -> np.ndarray:
        arr = tokens if type(tokens) is np.ndarray else np.asarray(tokens)
        if arr.ndim != ndim:
            shape = "[B]" if ndim == 1 else "[B, T]"
            raise ValueError(f"tokens must have shape {shape}, got shape {arr.shape}")
        if arr.dtype != _INT64:
            if arr.size and not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"tokens must be integers, got dtype {arr.dtype}")
            arr = arr.astype(np.int64)
        if arr.size:
            if arr.size <= 64:      # a step's few ids: Python's min/max of a list cost less than numpy reductions
                ids = arr.ravel().tolist()
                lo, hi = min(ids), max(ids)
            else:
                lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= self.vocab_size:
                raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got range [{lo}, {hi}]")
        return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)

    # entry points -----------------------------------------------------------------------------------------
    def step(self, tokens: Any, state: State, *, check_finite: bool = True,
             donate: bool = False) -> tuple[np.ndarray, State]:
        """One token per sequence: tokens ``[B]`` -> (logits ``[B, V]`` float32, new state).

        ``check_finite=False`` skips the NaN/inf scan of a ``state`` from elsewhere (a state this session
        returned is never scanned again: see the module docstring). ``donate=True`` gives ``state`` up: where the
        backend can (ONNX Runtime on the CPU, ExecuTorch), the new state is written over its buffers, which spares
        a step loop a new state's allocation (and in ONNX Runtime its copy); ``state`` is spent afterwards on
        every runtime (using it again raises ValueError)."""
        tokens = self._check_tokens(tokens, 1)
        arrays = self._check_state(state, tokens.shape[0], check_finite)
        logits, new = self._run_step(tokens, arrays, donate)
        if donate:
            state.spend()
        return logits, state.sealed_successor(new, self._seal, tokens.shape[0])

    def _run_step(self, tokens: np.ndarray, arrays: list, donate: bool) -> tuple[np.ndarray, list]:
        return self._step_donated(tokens, arrays) if donate else self.backend.run("step", tokens, arrays)

    def prefill(self, tokens: Any, state: State, *, check_finite: bool = True,
                logits: str = "all") -> tuple[np.ndarray, State]:
        """Any number of tokens: tokens ``[B, T]`` -> (logits ``[B, T, V]``, new state).

        ``T // C`` chunk calls, then the rest as steps: exact, no padding ever touches the state.
        ``logits="last"`` returns only the last token's logits ``[B, V]`` (what a prompt before generation
        needs): the other positions' logits are dropped chunk by chunk instead of gathered, which a long prompt
        of a large vocabulary would otherwise fill memory with (16K tokens x 50K ids: 3.3 GB), and where the
        backend lists ``chunk_last`` (ONNX Runtime) they are not computed at all.
        ``check_finite`` as in :meth:`step`.
        """
        tokens = self._check_tokens(tokens, 2)
        last_only = check_logits_mode(logits, tokens.shape[1])
        arrays = self._check_state(state, tokens.shape[0], check_finite)
        B, T = tokens.shape
        C = self.chunk_size
        pieces: list[np.ndarray] = []          # logits [B, t, V] per call; with last_only the last row alone

        def keep(rows: np.ndarray) -> None:
            if last_only:
                pieces[:] = [rows[:, -1]]
            else:
                pieces.append(rows)

        chunk_entry = self._last_chunk if last_only else "chunk"
        for start in range(0, T - T % C, C):
            out, arrays = self.backend.run(chunk_entry, np.ascontiguousarray(tokens[:, start:start + C]), arrays)
            keep(out)
        for t in range(T - T % C, T):
            # the caller's state is read, never donated; one an earlier call here made is this prefill's own
            out, arrays = self._run_step(np.ascontiguousarray(tokens[:, t]), arrays, donate=t > 0)
            keep(out[:, None])
        if last_only:
            result = np.array(pieces[0])        # a copy: a row of a chunk's logits would keep the chunk's alive
        else:
            result = np.concatenate(pieces, axis=1) if pieces else np.zeros((B, 0, self.vocab_size), np.float32)
        return result, state.sealed_successor(arrays, self._seal, B)

    def generate(
        self,
        prompt: Sequence[int] | str,
        max_new_tokens: int = 100,
        *,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_tokens: Sequence[int] | None = None,
        state: State | None = None,
    ) -> Iterator[int]:
        """Yield up to ``max_new_tokens`` tokens continuing ``prompt``: token ids, or text, which the artifact's
        tokenizer encodes (framed with BOS as the tokenizer frames prompts; decode the ids with
        ``session.tokenizer.decode``). ``stop_tokens`` (yielded, then the stream ends) defaults to the
        tokenizer's EOS ids for a text prompt and to none for an id prompt.

        Every argument (and a given ``state``) is checked here, before the first token is asked for."""
        if isinstance(prompt, str):
            stop_tokens = self.tokenizer.stop_ids if stop_tokens is None else stop_tokens
            prompt = self.tokenizer.encode(prompt, add_bos=True)
        stop_tokens = () if stop_tokens is None else stop_tokens
        if len(prompt) == 0:
            raise ValueError("prompt must contain at least one token")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
                or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        sampler = Sampler(SamplingConfig(temperature, top_k, top_p, seed))
        prompt = self._check_tokens(np.asarray([list(prompt)]), 2)
        state = self.init_state(1) if state is None else state
        self._check_state(state, 1, check_finite=True)
        return self._generate(prompt, int(max_new_tokens), sampler, tuple(stop_tokens), state)

    def _generate(self, prompt: np.ndarray, max_new_tokens: int, sampler: Sampler, stop_tokens: tuple,
                  state: State) -> Iterator[int]:
        last, state = self.prefill(prompt, state, check_finite=False, logits="last")    # checked by generate()
        for _ in range(max_new_tokens):
            token = int(sampler(last)[0])
            yield token
            if token in stop_tokens:
                return
            # this generator's own state (prefill made it): checked, and nobody else holds it
            last, state = self.step(np.asarray([token]), state, check_finite=False, donate=True)

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "variant": self.variant.name, **self.backend.describe(),
                "huge_pages": self.huge_pages.describe()}


def check_logits_mode(logits: Any, length: int) -> bool:
    """True for prefill's ``logits="last"``, False for ``"all"``; ValueError for another value, or for "last"
    with no token (``length`` 0)."""
    if logits not in ("all", "last"):
        raise ValueError(f"logits must be 'all' (every position, [B, T, V]) or 'last' (the last token's, [B, V]), "
                         f"got {logits!r}")
    if logits == "last" and length == 0:
        raise ValueError("logits='last' needs at least one token to prefill")
    return logits == "last"


def load(artifact_dir: str | Path, runtime: str = "onnxruntime", *, quantization: str | None = None,
         **options: Any) -> Session:
    """Open ``artifact_dir`` on ``runtime`` (torch, onnxruntime, onnxruntime-fused, executorch, coreml, tensorrt,
    cuda).

    ``quantization`` picks a variant (fp32/none, fp16, int8, int4); by default fp32, or the only one present.
    Files are checked against their sha256 before use. ``options`` go to the runtime (each lists its own when
    given an unknown one), e.g. ``threads``, or for executorch ``library``: seqedge's C++ runner library
    (``libseqedge.so``, built from runners/cpp) to run the program instead of the Python bindings; and to every
    runtime ``huge_pages`` (default True): once the runtime has loaded, the process's written anonymous memory (the
    runtime's weights among it) is advised onto 2 MiB pages where Linux allows (:mod:`seqedge.runtimes.huge_pages`).
    """
    target = get_runtime(runtime).target
    manifest = read_manifest(artifact_dir)
    return open_session(manifest, manifest.variant(target, quantization), runtime, **options)


def open_session(manifest: Manifest, variant: Variant, runtime: str, *, huge_pages: bool = True,
                 **options: Any) -> Session:
    """A Session for one variant of an already-read manifest; ImportError or RuntimeUnavailable if the runtime
    cannot run here (the message says what would). ``huge_pages``: see :func:`load`."""
    if not isinstance(huge_pages, bool):
        raise TypeError(f"huge_pages must be True or False, got {huge_pages!r}")
    with quiet_libraries():
        factory = get_runtime(runtime)
        factory.check_available()
        backend = factory.open(manifest, variant, **options)
    pages = advise_written_memory(huge_pages)
    session_class = getattr(backend, "session_class", Session)     # a backend may keep its states on a device
    return session_class(manifest, variant, backend, runtime, pages)
