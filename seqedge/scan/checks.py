"""Shape checks shared by the three forms of the scan, so each form fails the same way on bad input."""

from __future__ import annotations

import torch

from ..config import UPDATE_RULES


def check_scan_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    rule: str,
    initial_state: torch.Tensor | None,
) -> tuple[int, int, int, int, int]:
    """Validate shapes of a sequence scan and return ``(B, T, H, dk, dv)``."""
    _check_rule(rule)
    if q.dim() != 4:
        raise ValueError(f"q must be [B, T, H, dk], got shape {tuple(q.shape)}")
    B, T, H, dk = q.shape
    dv = v.shape[-1]
    _check_shapes({"k": (k, (B, T, H, dk)), "g": (g, (B, T, H, dk)), "v": (v, (B, T, H, dv)),
                   "beta": (beta, (B, T, H))})
    if initial_state is not None and tuple(initial_state.shape) != (B, H, dk, dv):
        raise ValueError(f"initial_state must have shape {(B, H, dk, dv)}, got {tuple(initial_state.shape)}")
    return B, T, H, dk, dv


def check_step_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    rule: str,
    state: torch.Tensor,
) -> tuple[int, int, int, int]:
    """Validate shapes of one decode step (q ``[B, H, dk]``, state ``[B, H, dk, dv]``); return ``(B, H, dk, dv)``."""
    _check_rule(rule)
    B, H, dk = q.shape
    dv = v.shape[-1]
    _check_shapes({"k": (k, (B, H, dk)), "g": (g, (B, H, dk)), "v": (v, (B, H, dv)), "beta": (beta, (B, H)),
                   "state": (state, (B, H, dk, dv))})
    return B, H, dk, dv


def _check_rule(rule: str) -> None:
    if rule not in UPDATE_RULES:
        raise ValueError(f"rule must be one of {list(UPDATE_RULES)}, got {rule!r}")


def _check_shapes(expected: dict[str, tuple[torch.Tensor, tuple[int, ...]]]) -> None:
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
