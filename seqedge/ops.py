"""The primitives a model is built with: one frozen ops object, the seam of every export flavour.

:class:`MixerOps` names each piece whose exported graph may differ between targets: the sequence scan, the
one-token scan, the short causal convolution (sequence and step), the SiLU, the broadcast of grouped keys and
per-head gates, RMSNorm and the logits head.
:data:`REFERENCE_OPS` holds the plain PyTorch forms (the eager model, the portable ONNX graphs, Core ML,
TensorRT); export flavours define their own in ``seqedge.export`` (``ort_fused.ORT_FUSED_OPS``: ONNX Runtime's
fused contrib ops; ``xnnpack_friendly.XNNPACK_OPS``: forms XNNPACK delegates) and build the model with them
(:meth:`seqedge.model.SequentialAttentionModel.with_ops`). Every form computes the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .scan import recurrent_step
from .scan.dispatch import sequence_scan


def at_least_f32(dtype: torch.dtype) -> torch.dtype:
    """float32 for float16/bfloat16/float32, float64 for float64 (so a float64 model is a float64 reference)."""
    return torch.promote_types(dtype, torch.float32)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x * rsqrt(mean(x^2) + eps) * weight`` over the last dim, computed in at least float32."""
    xf = x.to(at_least_f32(x.dtype))
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def _channels_first_conv(xt: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`short_conv` on channels-first x ``[B, ch, T]`` -> (y ``[B, ch, T]``, new tail)."""
    kernel = int(weight.shape[-1])
    xc = torch.cat([tail.to(xt.dtype), xt], dim=-1)                            # [B, ch, K-1+T]
    w = weight.to(xt.dtype)
    b = None if bias is None else bias.to(xt.dtype)
    if xt.dtype == torch.float64:
        # the float64 reference: torch's depthwise conv1d has no fast float64 CPU kernel (far slower)
        T = xt.shape[-1]
        y = sum(xc[..., i:i + T] * w[:, 0, i:i + 1] for i in range(kernel))  # [B, ch, T]
        y = y if b is None else y + b[:, None]
    else:
        y = F.conv1d(xc, w, b, groups=weight.shape[0])                          # [B, ch, T]
    return F.silu(y), xc[..., -(kernel - 1):].to(at_least_f32(xt.dtype))


def short_conv(x: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """SiLU of a causal depthwise conv whose last K-1 inputs are carried.

    x ``[B, T, ch]``, tail ``[B, ch, K-1]``, weight ``[ch, 1, K]``, bias ``[ch]`` or None ->
    (y ``[B, T, ch]``, new tail ``[B, ch, K-1]`` in at least float32).
    """
    y, new_tail = _channels_first_conv(x.transpose(1, 2), tail, weight, bias)
    return y.transpose(1, 2), new_tail


def one_token_by_reshape(channels_first: Callable, sequence: Callable, x: torch.Tensor, tail: torch.Tensor,
                         weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A short conv's step: ``channels_first`` (x ``[B, ch, T]``) on one token x ``[B, 1, ch]``, reached by
    reshapes; ``sequence`` (x ``[B, T, ch]``) for more tokens. Between ``[B, 1, ch]`` and ``[B, ch, 1]`` a reshape
    moves nothing: an exported step keeps it as a view, where each transpose (two per layer) is a copy."""
    if x.shape[1] != 1:
        return sequence(x, tail, weight, bias)
    ch = int(x.shape[2])
    y, new_tail = channels_first(x.reshape(-1, ch, 1), tail, weight, bias)
    return y.reshape(-1, 1, ch), new_tail


def short_conv_step(x: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`short_conv` for one token, x ``[B, 1, ch]`` (:func:`one_token_by_reshape`)."""
    return one_token_by_reshape(_channels_first_conv, short_conv, x, tail, weight, bias)


def tied_logits(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x ``[..., D]`` times the head (or embedding) weight ``[V, D]`` -> logits ``[..., V]`` in at least float32."""
    return (x @ weight.to(x.dtype).t()).to(at_least_f32(x.dtype))


@dataclass(frozen=True)
class MixerOps:
    """The primitives of one graph flavour (signatures as the reference forms).

    - ``sequence_scan(q, k, v, g, beta, *, rule, initial_state, chunk_size, scale)``: as
      :func:`seqedge.scan.chunked_scan`;
    - ``step_scan(q, k, v, g, beta, state, *, rule, scale)``: as :func:`seqedge.scan.recurrent_step`;
    - ``short_conv`` / ``short_conv_step(x, tail, weight, bias)``: as :func:`short_conv`, over a sequence / one token;
    - ``silu(x)``; ``expand(x, *sizes)``: as ``Tensor.expand``; ``rms_norm(x, weight, eps)``; ``logits(x, weight)``:
      as :func:`tied_logits`;
    - ``grouped_keys``: the scans take q and k with the config's key heads, which grouped keys make fewer than the
      value heads (value head h reads key head ``h // (H / key_heads)``), and group them themselves; otherwise the
      layer repeats each key head for its value heads before the scan;
    - ``head_gates``: ``sequence_scan`` takes a gate per head as ``[B, T, H, 1]`` and broadcasts it itself (the
      step scans always do); otherwise the layer expands it to ``[B, T, H, dk]``.
    """

    name: str = "reference"
    sequence_scan: Callable = sequence_scan
    step_scan: Callable = recurrent_step
    short_conv: Callable = short_conv
    short_conv_step: Callable = short_conv_step
    silu: Callable = F.silu
    expand: Callable = torch.Tensor.expand
    rms_norm: Callable = rms_norm
    logits: Callable = tied_logits
    grouped_keys: bool = False
    head_gates: bool = False


REFERENCE_OPS = MixerOps()
