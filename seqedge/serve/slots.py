"""Fixed-size state slots of one Session, and the batched step over any subset of them.

The state of every stream has the same fixed size, so N streams live in one batched ``State`` of N rows; a
stream owns a row (its slot) from admission to its end. A step gathers the rows of the stepping slots, runs one
``Session.step`` over them, and writes the new rows back. Row tensors may be numpy arrays or a runtime's own
tensors (anything indexable by a list of row numbers), so any runtime's Session plugs in.

Whether a runtime's step may batch is checked, not assumed: its step graph must accept the batch, and the rows of a
batched step must be independent (a dynamically quantized graph shares one activation scale over the whole batch,
so its rows are not). :func:`probe_batching` compares a batched step against each row stepped alone; a runtime
that fails is stepped one slot at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from seqedge.state import State, state_nbytes

# Largest deviation of a batched step's logits from the single-row steps, relative to the largest logit, that
# still counts as independent rows: float32 rounding for fp32 variants, fp16 rounding for the others.
ROW_TOLERANCE = {"fp32": 1e-5}
DEFAULT_ROW_TOLERANCE = 1e-3
PROBE_ROWS = 4


@dataclass(frozen=True)
class BatchPlan:
    """How slots are stepped: ``group`` rows per step call (1: one slot at a time) and why."""

    group: int | None          # None: all stepping slots in one call
    reason: str
    max_deviation: float | None = None

    @property
    def batched(self) -> bool:
        return self.group is None or self.group > 1

    def describe(self) -> dict[str, Any]:
        return {"batched_step": self.batched, "rows_per_step": self.group or "all", "reason": self.reason,
                "probe_max_rel_deviation": self.max_deviation}


def host_logits(logits: Any) -> np.ndarray:
    """Logits as a numpy array, whether a runtime returns numpy or torch tensors on a device (sampling runs on the
    host); float32 and float64 stay as they are, as in ``Session.generate``, half types become float32."""
    if hasattr(logits, "detach"):
        logits = logits.detach().cpu()
        logits = (logits if logits.element_size() >= 4 else logits.float()).numpy()
    return np.asarray(logits)


def metadata_batch_limit(info: dict[str, Any]) -> int | None:
    """The largest step batch an artifact variant declares (``batch.max`` or ``batch_sizes``); None: no bound."""
    if "batch" in info:
        return int(info["batch"].get("max", 1))
    if "batch_sizes" in info:
        sizes = sorted(int(b) for b in info["batch_sizes"])
        contiguous = [b for i, b in enumerate(sizes, start=1) if b == i]     # every size 1..k must run
        return contiguous[-1] if contiguous else 1
    return None


def probe_batching(session: Any, slots: int, seed: int = 0) -> BatchPlan:
    """Step ``min(slots, PROBE_ROWS, declared limit)`` different streams batched and alone; compare the logits."""
    limit = metadata_batch_limit(session.variant.info)
    rows = min(slots, PROBE_ROWS, limit or slots)
    if rows < 2:
        why = "one slot" if slots < 2 else f"the {session.variant.name} export runs batch 1 only"
        return BatchPlan(1, why)
    rng = np.random.default_rng(seed)
    singles, tokens = [], rng.integers(0, session.vocab_size, size=rows)
    for r in range(rows):
        _, state = session.prefill(rng.integers(0, session.vocab_size, size=(1, 3 + 5 * r)), session.init_state(1))
        singles.append(state)
    alone = np.concatenate([host_logits(session.step(tokens[r:r + 1], singles[r])[0]) for r in range(rows)])
    batched_state = session.init_state(rows)
    for r, state in enumerate(singles):
        for whole, row in zip(batched_state.tensors, state.tensors):
            whole[r] = row[0]
    try:
        together = host_logits(session.step(tokens, batched_state)[0])
    except (ValueError, RuntimeError) as err:
        return BatchPlan(1, f"the step graph rejected batch {rows}: {str(err).splitlines()[0]}")
    deviation = float(np.abs(together - alone).max() / max(float(np.abs(alone).max()), 1e-30))
    tolerance = ROW_TOLERANCE.get(session.variant.tag, DEFAULT_ROW_TOLERANCE)
    if deviation > tolerance:
        return BatchPlan(1, f"batched rows differ from single streams by {deviation:.2e} (relative; tolerance "
                            f"{tolerance:g}): the graph couples rows, e.g. one dynamic quantization scale per "
                            f"batch", deviation)
    return BatchPlan(limit, f"batched rows match single streams within {tolerance:g} (relative)", deviation)


class SlotStates:
    """The states of ``slots`` streams as one batched State; rows are gathered and scattered per call."""

    def __init__(self, session: Any, slots: int, plan: BatchPlan) -> None:
        self.session = session
        self.plan = plan
        self.state = session.init_state(slots)
        self.bytes_per_stream = state_nbytes(session.specs)
        self.step_calls = 0          # Session.step calls, and the rows they stepped in all
        self.rows_stepped = 0

    def reset(self, slot: int) -> None:
        """A fresh zero state for the stream that takes ``slot``."""
        for tensor in self.state.tensors:
            tensor[slot] = 0

    def _gather(self, slots: Sequence[int]) -> State:
        idx = list(slots)
        return self.state.with_tensors([t[idx] for t in self.state.tensors])

    def _scatter(self, slots: Sequence[int], new: State) -> None:
        idx = list(slots)
        for whole, rows in zip(self.state.tensors, new.tensors):
            whole[idx] = rows

    def prefill(self, slot: int, tokens: Sequence[int]) -> np.ndarray:
        """Feed ``tokens`` to the stream in ``slot``; the logits of its last token ``[V]``."""
        logits, new = self.session.prefill(np.asarray([list(tokens)], dtype=np.int64), self._gather([slot]),
                                           logits="last")
        self._scatter([slot], new)
        return host_logits(logits)[0]

    def step(self, slots: Sequence[int], tokens: Sequence[int]) -> np.ndarray:
        """One token for each of ``slots``: logits ``[len(slots), V]``, in groups of ``plan.group`` rows."""
        group = self.plan.group or len(slots)
        out = []
        for start in range(0, len(slots), group):
            part = list(slots[start:start + group])
            logits, new = self.session.step(np.asarray(tokens[start:start + group], dtype=np.int64),
                                            self._gather(part))
            self._scatter(part, new)
            self.step_calls += 1
            self.rows_stepped += len(part)
            out.append(host_logits(logits))
        return np.concatenate(out)
