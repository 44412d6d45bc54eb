"""Continuous batching over fixed-size state slots: pure logic, no HTTP.

Each :meth:`Scheduler.tick` frees the slots of cancelled streams, admits waiting requests into free slots, feeds
each admitted prompt one piece further (prefill), then steps every decoding stream once, batched (see
:mod:`seqedge.serve.slots`), samples one token per stream with its own sampler and emits it. A stream ends at
EOS, a stop string or ``max_tokens``, and its slot takes the next request on the following tick. Requests beyond
``slots + max_queue`` are refused with :class:`QueueFull`; requests before start or after stop with
:class:`Unavailable`.

The scheduler runs ticks on its own thread (:meth:`start`); :meth:`submit` and :meth:`Stream.cancel` may be called
from any thread. Output reaches the caller through the ``emit`` callback it submitted, on the scheduler thread.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from seqedge.sampling import Sampler, SamplingConfig

from .slots import BatchPlan, SlotStates, probe_batching
from .text import StopMatcher, TextTokenizer

BATCHING_MODES = ("auto", "serial")


class QueueFull(RuntimeError):
    """Every slot is busy and the waiting queue is full: retry later."""


class Unavailable(RuntimeError):
    """The scheduler is not running (not started yet, or shutting down)."""


@dataclass(frozen=True)
class SchedulerConfig:
    """``slots`` concurrent streams, ``max_queue`` more waiting; each tick feeds every admitted prompt
    ``prefill_chunks`` chunks further; ``batching`` "auto" steps slots batched when the runtime's rows are
    independent (checked at start), "serial" steps them one at a time."""

    slots: int = 8
    max_queue: int = 32
    prefill_chunks: int = 4
    batching: str = "auto"

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"slots must be >= 1, got {self.slots}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")
        if self.prefill_chunks < 1:
            raise ValueError(f"prefill_chunks must be >= 1, got {self.prefill_chunks}")
        if self.batching not in BATCHING_MODES:
            raise ValueError(f"batching must be one of {BATCHING_MODES}, got {self.batching!r}")


@dataclass(frozen=True)
class GenerationRequest:
    """Prompt token ids, at most ``max_tokens`` new tokens, sampling and stop strings of one stream."""

    prompt: tuple[int, ...]
    max_tokens: int
    sampling: SamplingConfig = SamplingConfig()
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.prompt) == 0:
            raise ValueError("prompt must contain at least one token")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")


@dataclass(frozen=True)
class Delta:
    """New text of a stream; the last one has ``finish_reason`` "stop", "length", "cancelled" or "error"."""

    text: str
    tokens: tuple[int, ...] = ()
    finish_reason: str | None = None
    error: str | None = None


class Stream:
    """One request in the scheduler: the handle :meth:`Scheduler.submit` returns."""

    def __init__(self, stream_id: int, request: GenerationRequest, emit: Callable[[Delta], None],
                 tokenizer: TextTokenizer) -> None:
        self.id = stream_id
        self.request = request
        self.emit = emit
        self.sampler = Sampler(request.sampling)
        self.decoder = tokenizer.stream_decoder()
        self.matcher = StopMatcher(request.stop)
        self.slot: int | None = None
        self.fed = 0                           # prompt tokens fed so far
        self.next_token: int | None = None     # the sampled token the next step feeds
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self._last: Delta | None = None
        self._cancelled = threading.Event()

    @property
    def prompt_tokens(self) -> int:
        return len(self.request.prompt)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop generating (e.g. the client went away); the slot is freed on the next tick."""
        self._cancelled.set()

    def finish(self, text: str, reason: str, error: str | None = None) -> None:
        """End the stream. Its last delta waits for :meth:`send_last`, which the scheduler calls once the slot is
        free: a client that sends its next request on seeing the end must not find its own slot still taken."""
        self.finish_reason = reason
        self._last = Delta(text, (), reason, error)

    def send_last(self) -> None:
        self.emit(self._last)


class Scheduler:
    """Streams of one Session in ``config.slots`` fixed-size state slots; see the module docstring."""

    def __init__(self, session: Any, tokenizer: TextTokenizer, config: SchedulerConfig = SchedulerConfig()) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.config = config
        plan = (BatchPlan(1, "serial stepping requested") if config.batching == "serial"
                else probe_batching(session, config.slots))
        self.states = SlotStates(session, config.slots, plan)
        self.prefill_piece = config.prefill_chunks * session.chunk_size
        self._free = list(range(config.slots))
        self._active: dict[int, Stream] = {}
        self._waiting: deque[Stream] = deque()
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._running = False
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.counts = {"completed": 0, "cancelled": 0, "rejected": 0, "failed": 0, "tokens": 0}

    # requests ---------------------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest, emit: Callable[[Delta], None]) -> Stream:
        """Queue ``request``; raises QueueFull or Unavailable at once rather than waiting."""
        with self._cond:
            if not self._running:
                raise Unavailable("the server is not accepting requests (starting up or shutting down)")
            if len(self._waiting) + len(self._active) >= self.config.slots + self.config.max_queue:
                self.counts["rejected"] += 1
                raise QueueFull(f"all {self.config.slots} slots are busy and {len(self._waiting)} requests are "
                                "waiting; retry later")
            stream = Stream(next(self._ids), request, emit, self.tokenizer)
            self._waiting.append(stream)
            self._cond.notify()
        return stream

    def has_work(self) -> bool:
        with self._cond:
            return bool(self._waiting or self._active)

    # one tick ---------------------------------------------------------------------------------------------
    def tick(self) -> None:
        """Free cancelled slots, admit, prefill one piece per admitted prompt, step every decoding stream."""
        with self._cond:
            self._drop_cancelled()
            while self._waiting and self._free:
                stream = self._waiting.popleft()
                stream.slot = self._free.pop(0)
                self.states.reset(stream.slot)
                self._active[stream.slot] = stream
            streams = list(self._active.values())
        for stream in streams:
            if stream.fed < stream.prompt_tokens:
                self._guarded([stream], self._prefill_piece, stream)
        decoding = [s for s in streams if s.next_token is not None and s.finish_reason is None]
        if decoding:
            self._guarded(decoding, self._decode, decoding)
        with self._cond:
            for stream in streams:
                if stream.finish_reason is not None:
                    self._release(stream, "failed" if stream.finish_reason == "error" else "completed")

    def _drop_cancelled(self) -> None:
        for stream in [s for s in self._waiting if s.cancelled]:
            self._waiting.remove(stream)
            self.counts["cancelled"] += 1
            stream.finish("", "cancelled")
            stream.send_last()
        for stream in [s for s in self._active.values() if s.cancelled]:
            stream.finish("", "cancelled")
            self._release(stream, "cancelled")

    def _release(self, stream: Stream, outcome: str) -> None:
        del self._active[stream.slot]
        self._free.append(stream.slot)
        self._free.sort()
        self.counts[outcome] += 1
        stream.send_last()

    def _guarded(self, streams: list[Stream], fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn``; if the runtime fails, end ``streams`` with the error instead of the server."""
        try:
            fn(*args)
        except Exception as err:          # reported to every affected client and kept for /health
            self.last_error = f"{type(err).__name__}: {err}"
            for stream in streams:
                stream.next_token = None
                stream.finish("", "error", self.last_error)

    def _prefill_piece(self, stream: Stream) -> None:
        piece = stream.request.prompt[stream.fed:stream.fed + self.prefill_piece]
        logits = self.states.prefill(stream.slot, piece)
        stream.fed += len(piece)
        if stream.fed == stream.prompt_tokens:
            self._accept(stream, int(stream.sampler(logits[None])[0]))

    def _decode(self, streams: list[Stream]) -> None:
        logits = self.states.step([s.slot for s in streams], [s.next_token for s in streams])
        for stream, row in zip(streams, logits):
            self._accept(stream, int(stream.sampler(row[None])[0]))

    def _accept(self, stream: Stream, token: int) -> None:
        """Emit a sampled token's text, or end the stream (EOS, stop string, max_tokens)."""
        stream.completion_tokens += 1
        self.counts["tokens"] += 1
        stream.next_token = None
        if token in self.tokenizer.stop_ids:
            stream.finish(self._tail(stream), "stop")
            return
        text, stopped = stream.matcher.push(stream.decoder.push(token))
        if stopped:
            stream.finish(text, "stop")
        elif stream.completion_tokens >= stream.request.max_tokens:
            tail = self._tail(stream)
            stream.finish(text + tail, "stop" if stream.matcher.stopped else "length")
        else:
            stream.next_token = token
            stream.emit(Delta(text, (token,)))

    @staticmethod
    def _tail(stream: Stream) -> str:
        text, _ = stream.matcher.push(stream.decoder.flush())
        return text + stream.matcher.flush()

    # thread -----------------------------------------------------------------------------------------------
    def accept(self) -> None:
        """Accept requests without running ticks (the caller calls :meth:`tick`); :meth:`start` runs them."""
        with self._cond:
            self._running = True

    def start(self) -> None:
        """Accept requests and run ticks on a background thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self.accept()
        self._thread = threading.Thread(target=self._run, name="seqedge-scheduler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._running and not (self._waiting or self._active):
                    self._cond.wait()
                if not self._running:
                    break
            self.tick()

    def stop(self, timeout: float = 10.0) -> None:
        """Refuse new requests, end the waiting and running ones with an error, and join the thread."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)      # a tick is one prefill piece per stream and one step: short
            if self._thread.is_alive():
                raise RuntimeError(f"the scheduler thread did not finish its tick within {timeout} s")
            self._thread = None
        with self._cond:
            for stream in [*self._waiting, *self._active.values()]:
                stream.finish("", "error", "the server is shutting down")
                stream.send_last()
            self._waiting.clear()
            self._active.clear()
            self._free = list(range(self.config.slots))

    @property
    def running(self) -> bool:
        return self._running

    def describe(self) -> dict[str, Any]:
        """Slots, queue, batching plan and counters, for /health and the startup line."""
        with self._cond:
            return {"slots": self.config.slots, "active": len(self._active), "waiting": len(self._waiting),
                    "max_queue": self.config.max_queue, **self.states.plan.describe(),
                    "state_bytes_per_stream": self.states.bytes_per_stream, "last_error": self.last_error,
                    "step_calls": self.states.step_calls, "rows_stepped": self.states.rows_stepped, **self.counts}

