"""The scan and the short convolution as ONNX Runtime's fused contrib ops, for the ``onnx-ort`` target.

ONNX Runtime >= 1.32 ships ``LinearAttention`` (CPU, CUDA, WebGPU providers): per-key decay ``[B, T, H*dk]`` or
per-head decay ``[B, T, H]`` (the step's gate per head, ``[..., 1]``), state ``[B, H, dk, dv]``, q/k/v packed
``[B, T, H*d]``. Its ``gated`` rule is our gated rule with beta folded
into k, and its ``gated_delta`` rule with per-key decay is exactly our delta rule (DESIGN §3).
:data:`ORT_FUSED_OPS` is the model's ops object for this flavour (:meth:`SequentialAttentionModel.with_ops`): its
scans go through :class:`LinearAttentionOp`, which computes with the plain PyTorch forms (so traced shapes and
values are right) and exports as one ``LinearAttention`` node per layer; a step's short causal convolution with the
carried tail (concat, depthwise conv, SiLU, slice) likewise becomes one ``CausalConvWithState`` node, while a
chunk's runs as plain elementwise ops on channels-last rows (:func:`_channels_last_short_conv` says why). The graph
then runs only in ONNX Runtime: TensorRT and other ONNX consumers take the portable ``onnx`` target.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from seqedge.ops import MixerOps, at_least_f32, one_token_by_reshape
from seqedge.scan import chunked_scan

ORT_RULE = {"gated": "gated", "delta": "gated_delta"}
MIN_ONNXRUNTIME = (1, 32)


@contextlib.contextmanager
def _untraced() -> Iterator[None]:
    """Compute values without recording them: the exporter records the whole Function as one node."""
    tracing = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        torch._C._set_tracing_state(tracing)


class LinearAttentionOp(torch.autograd.Function):
    """q, k ``[B, T, Hk, dk]`` (Hk key heads, each read by H / Hk consecutive value heads), decay ``[B, T, H, dk]`` or
    ``[B, T, H, 1]``, v ``[B, T, H, dv]``, beta ``[B, T, H]``, state ``[B, H, dk, dv]`` (all float32) -> o
    ``[B, T, H, dv]``, new state. For the gated rule v already carries beta (and beta is unused)."""

    @staticmethod
    def forward(ctx, q, k, v, decay, beta, state, rule: str, scale: float, heads: int, key_heads: int,  # noqa: D102
                bounded: bool):
        with _untraced():
            beta = torch.ones_like(beta) if rule == "gated" else beta
            q, k = (x.repeat_interleave(heads // key_heads, dim=2) for x in (q, k))
            return chunked_scan(q, k, v, decay.expand_as(q), beta, rule=rule, scale=scale, initial_state=state,
                                bounded=bounded)

    @staticmethod
    def symbolic(g, q, k, v, decay, beta, state, rule: str, scale: float, heads: int, key_heads: int,  # noqa: D102
                 bounded: bool):
        packed = g.op("Constant", value_t=torch.tensor([0, 0, -1], dtype=torch.int64))
        pack = lambda x: g.op("Reshape", x, packed)                      # [B, T, H, d] -> [B, T, H*d]
        inputs = [pack(q), pack(k), pack(v), state, pack(decay)]
        if rule == "delta":
            inputs.append(beta)
        # fewer query/key heads than value heads: the op's grouping (each key head serves a run of value heads)
        o, new_state = g.op("com.microsoft::LinearAttention", *inputs, update_rule_s=ORT_RULE[rule],
                            q_num_heads_i=key_heads, kv_num_heads_i=heads, scale_f=float(scale), outputs=2)
        o.setType(v.type().with_sizes([None, None, None]))               # float32, packed [B, T, H*dv]
        new_state.setType(state.type())
        unpacked = g.op("Constant", value_t=torch.tensor([0, 0, heads, -1], dtype=torch.int64))
        return g.op("Reshape", o, unpacked), new_state


def _fused_sequence_scan(q, k, v, g, beta, *, rule, initial_state, chunk_size=None, scale=None, bounded=True):
    q, k, v, g, beta = (x.float() for x in (q, k, v, g, beta))
    if rule == "gated":     # on v, not k: a grouped key is shared by value heads with betas of their own
        v = v * beta.reshape(-1, int(beta.shape[1]), int(beta.shape[2]), 1)
    scale = int(q.shape[-1]) ** -0.5 if scale is None else float(scale)      # python numbers: node attributes
    return LinearAttentionOp.apply(q, k, v, g, beta, initial_state.float(), rule, scale, int(v.shape[2]),
                                   int(q.shape[2]), bounded)


def _fused_recurrent_step(q, k, v, g, beta, state, *, rule, scale=None):
    # T = 1 added by reshapes to constant shapes, not unsqueezes: the exported graph folds a chain of reshapes
    # into one node, while each unsqueeze stays a node of its own
    one = lambda x: x.reshape(-1, 1, *(int(d) for d in x.shape[1:]))       # noqa: E731
    o, new_state = _fused_sequence_scan(one(q), one(k), one(v), one(g), one(beta), rule=rule, initial_state=state,
                                        scale=scale)
    # a reshape rather than o[:, 0]: it folds into the op's own unpacking reshape (a Gather would stay a node)
    return o.reshape(-1, int(o.shape[2]), int(o.shape[3])), new_state


class CausalConvOp(torch.autograd.Function):
    """x ``[B, C, T]``, depthwise weight ``[C, 1, K]``, bias ``[C]``, carried tail ``[B, C, K-1]`` (one dtype) ->
    SiLU(causal conv) ``[B, C, T]``, new tail; exports as ``com.microsoft::CausalConvWithState``."""

    @staticmethod
    def forward(ctx, x, weight, bias, tail):  # noqa: D102
        with _untraced():
            xc = torch.cat([tail, x], dim=-1)
            y = torch.nn.functional.conv1d(xc, weight, bias, groups=weight.shape[0])
            return torch.nn.functional.silu(y), xc[..., -tail.shape[-1]:].clone()

    @staticmethod
    def symbolic(g, x, weight, bias, tail):  # noqa: D102
        y, new_tail = g.op("com.microsoft::CausalConvWithState", x, weight, bias, tail, activation_s="silu",
                           outputs=2)
        y.setType(x.type())
        new_tail.setType(tail.type())
        return y, new_tail


def _fused_channels_first(xt: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """:class:`CausalConvOp` on channels-first x ``[B, C, T]`` -> (y ``[B, C, T]``, new tail in at least float32)."""
    bias = torch.zeros(weight.shape[0], dtype=xt.dtype) if bias is None else bias.to(xt.dtype)
    y, new_tail = CausalConvOp.apply(xt, weight.to(xt.dtype), bias, tail.to(xt.dtype))
    return y, new_tail.to(at_least_f32(xt.dtype))


def _channels_last_short_conv(x: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor,
                              bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`seqedge.ops.short_conv` over a sequence (same inputs and outputs) as K shifted rows of x ``[B, T, C]``
    times the taps, summed, in plain ops.

    A chunk's conv is traced this way rather than as :class:`CausalConvOp`: ONNX Runtime's ``CausalConvWithState``
    takes channels-first input, so each layer would add two transposes of the chunk, and its kernel runs slower
    over many tokens than these elementwise ops (one token the other way round: the step keeps the fused op).
    Every slice's bounds count from one end of the rows, so the graph does not depend on the chunk's length."""
    kernel = int(weight.shape[-1])
    xc = torch.cat([tail.to(x.dtype).transpose(1, 2), x], dim=1)              # [B, K-1+T, C]
    taps = weight.to(x.dtype)[:, 0].t()                                        # [K, C]
    y = bias.to(x.dtype) if bias is not None else None
    for i in range(kernel):
        rows = xc[:, i:i - (kernel - 1)] if i < kernel - 1 else xc[:, kernel - 1:]
        y = rows * taps[i] if y is None else y + rows * taps[i]
    return torch.nn.functional.silu(y), xc[:, -(kernel - 1):].transpose(1, 2).to(at_least_f32(x.dtype))


def _fused_short_conv_step(x: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """:func:`seqedge.ops.short_conv_step`: one token through :class:`CausalConvOp` (reached by reshapes,
    :func:`seqedge.ops.one_token_by_reshape`), more through :func:`_channels_last_short_conv`."""
    return one_token_by_reshape(_fused_channels_first, _channels_last_short_conv, x, tail, weight, bias)


# The model's scans trace as ``com.microsoft::LinearAttention`` and its one-token convolutions as
# ``com.microsoft::CausalConvWithState`` (TorchScript ONNX exporter); norms, SiLU and the head stay plain. Grouped
# keys and gates per head go in as they are: the op's own grouping and per-head decay replace the expands the other
# flavours trace.
ORT_FUSED_OPS = MixerOps(name="ort-fused", sequence_scan=_fused_sequence_scan, step_scan=_fused_recurrent_step,
                         short_conv=_channels_last_short_conv, short_conv_step=_fused_short_conv_step,
                         grouped_keys=True, head_gates=True)
