"""What a latency benchmark is configured with and what it yields: :class:`BenchConfig`, the per-context and
per-run results, the context-length syntax (``0,1k,16k``). Shared by the in-process measurement
(:mod:`seqedge.evaluate.latency`) and the native runner's (:mod:`seqedge.evaluate.native_runner`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

_CONTEXT_RE = re.compile(r"^\s*(\d+)\s*([kKmM]?)\s*$")


def parse_contexts(spec: str | Sequence[int]) -> tuple[int, ...]:
    """``"0,1k,16k,64k"`` -> ``(0, 1024, 16384, 65536)``: sorted, unique, each >= 0 (k = 1024, m = 1024**2)."""
    if not isinstance(spec, str):
        values = [int(v) for v in spec]
    else:
        values = []
        for part in spec.split(","):
            match = _CONTEXT_RE.match(part)
            if not match:
                raise ValueError(f"context {part.strip()!r} in {spec!r} is not a length like 0, 512, 1k, 64k or 1m")
            scale = {"": 1, "k": 1024, "m": 1024 ** 2}[match.group(2).lower()]
            values.append(int(match.group(1)) * scale)
    if not values or any(v < 0 for v in values):
        raise ValueError(f"contexts must be a non-empty list of lengths >= 0, got {spec!r}")
    return tuple(sorted(set(values)))


def format_context(n: int) -> str:
    """1024 -> "1k", 65536 -> "64k", 100 -> "100"."""
    if n >= 1024 ** 2 and n % 1024 ** 2 == 0:
        return f"{n // 1024 ** 2}m"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}k"
    return str(n)


@dataclass(frozen=True)
class BenchConfig:
    """How much to measure. Defaults suit the tiny model on a 2-core CPU (a 64k prefill is the long pole)."""

    contexts: tuple[int, ...] = (0, 1024, 16384, 65536)
    steps: int = 100             # timed steps per context
    warmup: int = 5              # untimed steps before them (the state moves on by these too)
    prefill_tokens: int = 2048   # tokens timed through prefill (chunk calls) for prefill tokens/s
    stepwise_tokens: int = 256   # tokens timed one ``step`` at a time for token-by-token tokens/s
    ttft_prompt: int = 128       # prompt length of the time-to-first-token measurement
    sweeps: int = 1              # passes of the context sweep; each context reports the pass with the lowest p50

    def __post_init__(self) -> None:
        object.__setattr__(self, "contexts", parse_contexts(self.contexts))
        for name in ("steps", "prefill_tokens", "stepwise_tokens", "ttft_prompt", "sweeps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be an integer >= 0, got {self.warmup!r}")
        per_context = self.warmup + self.steps
        for a, b in zip(self.contexts, self.contexts[1:]):
            if b - a < per_context:
                raise ValueError(f"contexts {a} and {b} are closer than warmup + steps = {per_context} tokens, "
                                 f"which the measurement at {a} consumes; space them further or use fewer steps")

    def stream_length(self) -> int:
        """Tokens the context sweep consumes (the other phases start from a fresh state)."""
        return max(self.contexts) + self.warmup + self.steps + 1


@dataclass
class ContextResult:
    context: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    reach_s: float               # seconds the prefill from the previous context to this one took
    reach_tokens: int            # tokens that prefill consumed
    memory_bytes: int            # state / KV cache held while measuring
    rss_bytes: int | None        # process RSS after the timed steps
    iqr_ms: float = 0.0          # spread of the timed steps: p75 - p25
    sweep_p50_ms: list[float] = field(default_factory=list)   # p50 of every sweep (this row is the lowest)

    @property
    def sweep_median_ms(self) -> float:
        """Median over sweeps of each sweep's p50 (the row's own p50 with one sweep)."""
        return float(np.median(self.sweep_p50_ms)) if self.sweep_p50_ms else self.p50_ms


@dataclass
class RunResult:
    name: str                    # e.g. "onnxruntime/int8", "transformer-kv/onnxruntime"
    kind: str                    # "seqedge" or "baseline"
    contexts: list[ContextResult]
    ttft_ms: float | None              # None where the stepper has no real prefill (the KV baseline)
    prefill_tokens_per_s: float | None
    stepwise_tokens_per_s: float
    peak_rss_bytes: int
    rss_before_bytes: int | None
    load_s: float | None = None
    artifact_bytes: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def prefill_speedup(self) -> float | None:
        if self.prefill_tokens_per_s is None:
            return None
        return self.prefill_tokens_per_s / self.stepwise_tokens_per_s

    @property
    def flatness(self) -> float:
        """p50 latency at the longest context over p50 at the shortest (1.0 = flat)."""
        return self.contexts[-1].p50_ms / self.contexts[0].p50_ms

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["prefill_speedup"] = self.prefill_speedup
        out["flatness"] = self.flatness
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        data = {k: v for k, v in data.items() if k not in ("prefill_speedup", "flatness")}
        data["contexts"] = [ContextResult(**c) for c in data["contexts"]]
        return cls(**data)
