"""ONNX Runtime steps of a donated state, over buffers the backend owns and binds once.

A step loop that gives each state up (``Session.step(..., donate=True)``, ``Session.generate``) lets the backend
keep the state in arrays of its own, bound to the step graph by pointer in two ``IOBinding``s made once: a call
then costs the run alone, with no output allocated and no input or output wrapped. Each state output is either
written over its own input, for the states the export listed as safe to update in place
(``Variant.info["step_in_place_states"]``: those only ONNX Runtime's ``LinearAttention`` or
``CausalConvWithState`` reads, whose CPU kernels copy the past state before they write the present one), or into
a second buffer the next call reads (the two bindings alternate). In place, a large scan state is read and written
once per step instead of being copied into a new buffer first: Mamba2-130M's 19 MB state.

The in-place update relies on how those kernels are written, so before a chain first writes in place it runs a
step both ways on the same random inputs (:func:`in_place_agrees`); where the results differ in any bit, the
backend keeps every state apart for the rest of its life.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np


class StepChain:
    """One batch size's step over owned buffers: ``step(tokens)`` advances the state they hold.

    ``current`` is the state after the last call (before the first: a copy of the state given); the arrays are
    read-only to numpy and written only by ONNX Runtime, through the bindings.
    """

    def __init__(self, session: Any, state_names: Sequence[str], state: Sequence[np.ndarray],
                 in_place: Collection[str]) -> None:
        batch = int(state[0].shape[0])
        vocab = int(session.get_outputs()[0].shape[-1])
        self.tokens = np.zeros(batch, np.int64)
        self.logits = np.empty((batch, vocab), np.float32)
        first = [_owned_copy(s) for s in state]
        other = [a if name in in_place else _owned_copy(a) for name, a in zip(state_names, first)]
        self._sides = (first, other)            # call k reads side k % 2 and writes the other
        self._bindings = tuple(self._bind(session, state_names, self._sides[k], self._sides[1 - k])
                               for k in range(2))
        self._next = 0

    def _bind(self, session: Any, names: Sequence[str], reads: list[np.ndarray], writes: list[np.ndarray]) -> Any:
        io = session.io_binding()
        _bind_array(io.bind_input, "tokens", self.tokens)
        _bind_array(io.bind_output, "logits", self.logits)
        for name, src, dst in zip(names, reads, writes):
            _bind_array(io.bind_input, name, src)
            _bind_array(io.bind_output, f"new_{name}", dst)
        return io

    @property
    def batch_size(self) -> int:
        return len(self.tokens)

    @property
    def current(self) -> list[np.ndarray]:
        return list(self._sides[self._next])

    def holds(self, state: Sequence[Any]) -> bool:
        """True when ``state`` is exactly this chain's current arrays (the state its last call returned)."""
        side = self._sides[self._next]
        return len(state) == len(side) and all(a is b for a, b in zip(state, side))

    def step(self, session: Any, tokens: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits ``[B, V]`` (a new array) and the new state: this chain's arrays, which only a later call given
        exactly them (a donated step) writes over."""
        np.copyto(self.tokens, tokens)
        session.run_with_iobinding(self._bindings[self._next])
        self._next = 1 - self._next
        return self.logits.copy(), self.current


def in_place_agrees(session: Any, state_names: Sequence[str], state: Sequence[np.ndarray],
                    in_place: Collection[str], seed: int = 0) -> bool:
    """Whether a chain updating ``in_place`` states over their inputs gives, bit for bit, what a plain run gives,
    from a random state shaped like ``state`` (two chained steps, so the second reads what the first wrote)."""
    rng = np.random.default_rng(seed)
    start = [(rng.random(a.shape, dtype=np.float32) - 0.5).astype(a.dtype, copy=False) for a in state]
    tokens = [rng.integers(0, 2, len(state[0])).astype(np.int64) for _ in range(2)]
    chain = StepChain(session, state_names, start, in_place)
    feeds = dict(zip(state_names, start))
    outputs = ["logits", *(f"new_{n}" for n in state_names)]
    for t in tokens:
        logits, *new = session.run(outputs, {**feeds, "tokens": t})
        feeds = dict(zip(state_names, new))
        got_logits, got = chain.step(session, t)
        if not (np.array_equal(logits, got_logits) and all(np.array_equal(a, b) for a, b in zip(new, got))):
            return False
    return True


def _owned_copy(array: np.ndarray) -> np.ndarray:
    out = np.array(array, order="C", copy=True)
    out.flags.writeable = False          # written by ONNX Runtime through the bindings only
    return out


def _bind_array(bind: Any, name: str, array: np.ndarray) -> None:
    bind(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
