"""Shared by the decode A/B probes: two sessions' logits after the same tokens, and their donated decode loops
timed in alternating blocks."""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def last_logits(sessions: dict[str, Any], tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Each session's logits after stepping ``tokens`` (donated) from a zero state."""
    last = {}
    for name, s in sessions.items():
        state = s.init_state(1)
        for t in tokens:
            logits, state = s.step(np.array([t]), state, donate=True)
        last[name] = logits
    return last


def alternating_p50(sessions: dict[str, Any], token: int, rounds: int, calls: int, *,
                    donate: bool = True) -> dict[str, list[float]]:
    """Per session, the p50 (ms) of each block of ``calls`` consecutive steps (donated, or plain with ``donate``
    False) after 3 untimed ones; the sessions' blocks alternate, their order reversed every round."""
    states = {name: s.init_state(1) for name, s in sessions.items()}
    one = np.array([token])
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for r in range(rounds):
        for name in (list(sessions) if r % 2 == 0 else list(sessions)[::-1]):
            s, state, block = sessions[name], states[name], []
            for _ in range(3):
                _, state = s.step(one, state, donate=donate)
            for _ in range(calls):
                started = time.perf_counter()
                _, state = s.step(one, state, donate=donate)
                block.append(time.perf_counter() - started)
            states[name] = state
            times[name].append(float(np.median(block)) * 1e3)
    return times
