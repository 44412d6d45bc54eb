"""Next-token sampling on numpy logits, shared by the torch model and every runtime session."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


DEFAULT_MAX_NEW_TOKENS = 100     # Session.generate's default, and the CLI's


@dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 means greedy; top_k 0 and top_p 1.0 disable those filters.

    These defaults are the library's and the CLI's (``model.generate``, ``Session.generate`` and
    ``seqedge generate`` take the same ones; a test keeps them equal)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        real = (int, float, np.integer, np.floating)
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, real) \
                or not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 for greedy), got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0: off), got {self.top_k!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, real) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be a number in (0, 1] (1: off), got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer))):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")


class Sampler:
    """Picks the next token of each row of ``logits [B, V]``; seeded, so a run can be repeated exactly."""

    def __init__(self, config: SamplingConfig) -> None:
        self.config = config
        self._rng = np.random.default_rng(config.seed)

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        logits = np.asarray(logits, dtype=np.float64)
        if logits.ndim == 1:
            logits = logits[None]
        cfg = self.config
        if cfg.temperature == 0:
            return logits.argmax(-1)
        logits = logits / cfg.temperature
        if cfg.top_k:
            kth = np.sort(logits, axis=-1)[:, -min(cfg.top_k, logits.shape[-1])][:, None]
            logits = np.where(logits < kth, -np.inf, logits)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        if cfg.top_p < 1:
            order = np.argsort(-probs, axis=-1)
            sorted_p = np.take_along_axis(probs, order, -1)
            keep_sorted = np.cumsum(sorted_p, -1) - sorted_p < cfg.top_p     # always keeps the top token
            keep = np.zeros_like(keep_sorted)
            np.put_along_axis(keep, order, keep_sorted, -1)
            probs = np.where(keep, probs, 0.0)
            probs /= probs.sum(-1, keepdims=True)
        return np.array([self._rng.choice(probs.shape[-1], p=row) for row in probs])
