"""Checks shared by the donated-step tests of every runtime (``Session.step(..., donate=True)``)."""

from __future__ import annotations

import numpy as np


def assert_streams_in_turn_match_alone(session, tokens: np.ndarray) -> None:
    """Two streams (the rows of ``tokens`` ``[2, T]``) donating their states in turn end on the logits each gives
    stepped alone without donating."""
    alone = []
    for row in range(2):
        st = session.init_state(1)
        for t in range(tokens.shape[1]):
            logits, st = session.step(tokens[row:row + 1, t], st)
        alone.append(logits)
    streams = [session.init_state(1), session.init_state(1)]
    for t in range(tokens.shape[1]):
        for row in range(2):
            logits, streams[row] = session.step(tokens[row:row + 1, t], streams[row], donate=True)
            if t == tokens.shape[1] - 1:
                np.testing.assert_array_equal(logits, alone[row])
