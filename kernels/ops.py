"""torch.library registration of the kernels: custom ops with a fake (meta) implementation and autograd.

``seqedge::chunk_scan_gated``   forward: Triton on CUDA, the chunked PyTorch form on every other device.
``seqedge::chunk_scan_gated_bwd`` backward: Triton on CUDA (:mod:`seqedge.kernels.chunk_scan_bwd_triton`: chunk
    states, reverse state gradients, then every chunk's gradients in parallel; long batched sequences in pieces,
    so the workspace stays within BWD_WORKSPACE_FRACTION of the card's memory). On every other device it
    recomputes the scan with the chunked PyTorch form and differentiates that with autograd, segment by segment
    in reverse, so memory stays bounded by one segment: the reference the Triton backward is tested against.
``seqedge::step_scan``          one decode step, in place on the state: Triton on CUDA, PyTorch elsewhere.

Importing this module imports neither triton nor CUDA: the CUDA implementations import the Triton modules
when they first run.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

import torch
from torch import Tensor
from torch._C import DispatchKey

from seqedge.scan import chunked_scan, recurrent_step

KERNEL_DTYPES = (torch.float32, torch.bfloat16)
BWD_SEGMENT = 8192  # tokens recomputed at once by the backward (bounds its memory)
# CUDA backward: batch rows, then (for one row) the sequence, are taken in pieces when the backward's workspace
# (chunk states and their gradients, about 42 KB per token at H=16, head dims 128, bf16) would pass this fraction
# of the card's memory (see backward_plan); pieces of a sequence are never shorter than BWD_MIN_PIECE tokens.
BWD_WORKSPACE_FRACTION = 0.25
BWD_MIN_PIECE = 4096


def workspace_bytes_per_token(heads: int, dk: int, dv: int, itemsize: int, chunk: int = 32) -> float:
    """Bytes the CUDA backward allocates per token of one batch row: the chunk states and their gradients, the
    prepass's operands and scores, the chunk decays and dbeta's partial sums."""
    per_elem = 2 * dk * dv / chunk + 2 * dk + chunk
    return heads * (itemsize * per_elem + 4 * dk / chunk + 4 * max(dk // 64, 1))


def backward_plan(batch: int, length: int, bytes_per_token: float, budget: float, min_piece: int) -> tuple[int, int]:
    """(batch rows per launch group, tokens per piece of the sequence) keeping the backward's workspace within
    ``budget``: every row at once when it fits, else as many whole rows as fit (rows are independent and
    contiguous: free to split), else one row at a time in pieces of the sequence (each piece after the first
    needs the state entering it: an extra forward pass), multiples of 64 tokens and at least ``min_piece``."""
    row_bytes = bytes_per_token * max(length, 1)
    rows = int(budget // row_bytes)
    if rows >= 1:
        return min(rows, batch), length
    piece = int(budget // bytes_per_token) // 64 * 64
    return 1, min(length, max(min_piece, piece))


@contextmanager
def autograd_inside_op():
    """Re-enable autograd inside a custom op's implementation (the dispatcher excludes it there), so the
    backward op can differentiate the chunked PyTorch form while staying opaque to torch.compile."""
    include = torch._C._dispatch_tls_local_include_set()
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in (DispatchKey.AutogradFunctionality, DispatchKey.ADInplaceOrView):
        exclude = exclude.remove(key)
    with torch._C._ForceDispatchKeyGuard(include, exclude), torch.enable_grad():
        yield


def state_dtype(q: Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


# chunk scan, forward ------------------------------------------------------------------------------------------
@torch.library.custom_op("seqedge::chunk_scan_gated", mutates_args=())
def chunk_scan_gated(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, initial_state: Optional[Tensor],
                     scale: float) -> tuple[Tensor, Tensor]:
    """Default (non-CUDA) implementation: the chunked PyTorch form. o in q's dtype, state float32/float64."""
    o, state = chunked_scan(q, k, v, g, beta, rule="gated", scale=scale, initial_state=initial_state)
    return o.to(q.dtype).contiguous(), state.to(state_dtype(q)).contiguous()


@chunk_scan_gated.register_kernel("cuda")
def chunk_scan_gated_cuda(q, k, v, g, beta, initial_state, scale):
    """CUDA implementation: the Triton forward with the fastest config for the shape. The public
    ``seqedge.kernels.chunk_scan`` also calls it directly, past the dispatcher, when :func:`calls_cuda_directly`
    allows."""
    from .chunk_scan_triton import chunk_scan_fwd, pick_config

    check_cuda_inputs("chunk scan", q, k, v)
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    init = None if initial_state is None else initial_state.float().contiguous()
    config = pick_config(q, k, v, g, beta, init, scale)
    return chunk_scan_fwd(q, k, v, g, beta, init, scale, config)


def check_cuda_inputs(what: str, q: Tensor, k: Tensor, v: Tensor) -> None:
    """ValueError unless the Triton kernels take these inputs: dtypes and head dims."""
    from .chunk_scan_triton import check_kernel_shapes

    if q.dtype not in KERNEL_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"the Triton {what} takes q, k, v all float32 or all bfloat16 (float16 would overflow "
                         f"exp(40) inside a sub-chunk), got {q.dtype}, {k.dtype}, {v.dtype}; cast them first or "
                         f"call seqedge.scan.chunked_scan")
    why = check_kernel_shapes(q.shape[-1], v.shape[-1])
    if why:
        raise ValueError(why)


def calls_cuda_directly(*tensors: Optional[Tensor]) -> bool:
    """Whether :func:`seqedge.kernels.chunk_scan` may skip the dispatcher and call the CUDA implementation itself:
    plain CUDA tensors (no subclass, no torch.func wrapper), nothing to differentiate, not inside torch.compile,
    export or torch.jit tracing. The dispatcher's work (autograd and device keys, the Python custom-op layers) is
    host time before the first launch, which an idle GPU waits through (benchmarks/fwd_call_overhead.py measures
    it); every other case keeps the custom op."""
    present = [t for t in tensors if t is not None]
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    return (not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and all(type(t) is Tensor and t.is_cuda and not wrapped(t) for t in present)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in present)))


@chunk_scan_gated.register_fake
def _chunk_scan_gated_fake(q, k, v, g, beta, initial_state, scale):
    B, T, H, dk = q.shape
    dv = v.shape[-1]
    return q.new_empty(B, T, H, dv), q.new_empty(B, H, dk, dv, dtype=state_dtype(q))


# chunk scan, backward -----------------------------------------------------------------------------------------
@torch.library.custom_op("seqedge::chunk_scan_gated_bwd", mutates_args=())
def chunk_scan_gated_bwd(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, initial_state: Optional[Tensor],
                         do: Tensor, dfinal: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor,
                                                                            Tensor]:
    """Gradients (dq, dk, dv, dg, dbeta, dinitial_state); default (non-CUDA) implementation: reverse-order recompute
    of the chunked PyTorch form, differentiated by autograd."""
    return recompute_backward("gated", chunk_scan_gated, q, k, v, g, beta, initial_state, do, dfinal, scale)


def recompute_backward(rule: str, forward, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                       initial_state: Optional[Tensor], do: Tensor, dfinal: Tensor,
                       scale: float) -> tuple[Tensor, ...]:
    """The backward of either rule's scan on any device: the state entering each segment of BWD_SEGMENT tokens
    from ``forward(q, k, v, g, beta, state, scale) -> (o, state)``, then the segments in reverse, each recomputed
    with the chunked PyTorch form and differentiated by autograd, so memory stays bounded by one segment.
    g may be ``[B, T, H, 1]`` (one gate per head): it is broadcast over the keys and its gradient summed."""
    B, T, H, dk = q.shape
    dv = v.shape[-1]
    sdt = state_dtype(q)
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    seg = BWD_SEGMENT
    starts = list(range(0, T, seg)) or [0]
    state = (torch.zeros(B, H, dk, dv, dtype=sdt, device=q.device) if initial_state is None
             else initial_state.detach().to(sdt))
    seg_states = []                                              # state entering each segment, no grad
    with torch.no_grad():
        for t0 in starts[:-1]:
            seg_states.append(state)
            sl = slice(t0, t0 + seg)
            _, state = forward(q[:, sl], k[:, sl], v[:, sl], g[:, sl], beta[:, sl], state, scale)
            state = state.to(sdt)
        seg_states.append(state)
    grads = [torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (q, k, v, g, beta)]
    d_state = dfinal.to(cdt)
    for t0, s_in in zip(reversed(starts), reversed(seg_states)):
        sl = slice(t0, t0 + seg)
        with autograd_inside_op():
            ins = [x[:, sl].detach().to(cdt).requires_grad_() for x in (q, k, v, g, beta)]
            s_leaf = s_in.detach().to(cdt).requires_grad_()
            gx = ins[3] if ins[3].shape[-1] == dk else ins[3].expand(*ins[3].shape[:-1], dk)
            o, s_out = chunked_scan(ins[0], ins[1], ins[2], gx, ins[4], rule=rule, scale=scale, initial_state=s_leaf)
            got = torch.autograd.grad((o, s_out), [*ins, s_leaf], (do[:, sl].to(cdt), d_state))
        for dst, src in zip(grads, got[:5]):
            dst[:, sl] = src.to(dst.dtype)
        d_state = got[5]
    return (*grads, d_state.to(sdt))


@chunk_scan_gated_bwd.register_kernel("cuda")
def _chunk_scan_gated_bwd_cuda(q, k, v, g, beta, initial_state, do, dfinal, scale):
    from .chunk_scan_bwd_triton import chunk_scan_bwd_pieces, pick_bwd_config
    from .chunk_scan_triton import pick_config

    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    do = do.to(q.dtype).contiguous()
    dfinal = dfinal.float().contiguous()
    init = None if initial_state is None else initial_state.float().contiguous()
    budget = BWD_WORKSPACE_FRACTION * torch.cuda.get_device_properties(q.device).total_memory
    B, T, H, dk = q.shape
    rows, piece = backward_plan(B, T, workspace_bytes_per_token(H, dk, v.shape[-1], q.element_size()), budget,
                                BWD_MIN_PIECE)
    first = [x[:rows, :piece].contiguous() for x in (q, k, v, g, beta, do)]
    first_init = None if init is None else init[:rows]
    config = pick_bwd_config(*first[:5], first_init, first[5], dfinal[:rows], scale)
    fwd_config = pick_config(*first[:5], first_init, scale) if piece < T else None
    return chunk_scan_bwd_pieces(q, k, v, g, beta, init, do, dfinal, scale, rows, piece, config, fwd_config)


@chunk_scan_gated_bwd.register_fake
def _chunk_scan_gated_bwd_fake(q, k, v, g, beta, initial_state, do, dfinal, scale):
    B, H, dk, dv = dfinal.shape
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(g),
            torch.empty_like(beta), q.new_empty(B, H, dk, dv, dtype=state_dtype(q)))


def _setup_context(ctx, inputs, output):
    q, k, v, g, beta, initial_state, scale = inputs
    ctx.save_for_backward(q, k, v, g, beta, initial_state)
    ctx.scale = scale
    ctx.has_init = initial_state is not None


def register_scan_autograd(op, bwd_op) -> None:
    """Autograd for a chunk-scan op ``(q, k, v, g, beta, initial_state, scale) -> (o, final)`` through its backward
    op ``(q, k, v, g, beta, initial_state, do, dfinal, scale) -> (dq, dk, dv, dg, dbeta, dinitial_state)``."""

    def backward(ctx, do, dfinal):
        q, k, v, g, beta, initial_state = ctx.saved_tensors
        B, T, H, dk = q.shape
        dv = v.shape[-1]
        if do is None:
            do = torch.zeros(B, T, H, dv, dtype=q.dtype, device=q.device)
        if dfinal is None:
            dfinal = torch.zeros(B, H, dk, dv, dtype=state_dtype(q), device=q.device)
        dq, dk_, dv_, dg, dbeta, ds0 = bwd_op(q, k, v, g, beta, initial_state, do, dfinal, ctx.scale)
        return dq, dk_, dv_, dg, dbeta, (ds0.to(initial_state.dtype) if ctx.has_init else None), None

    op.register_autograd(backward, setup_context=_setup_context)


register_scan_autograd(chunk_scan_gated, chunk_scan_gated_bwd)


# decode step --------------------------------------------------------------------------------------------------
@torch.library.custom_op("seqedge::step_scan", mutates_args=("state",))
def step_scan_op(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor, delta: bool,
                 scale: float) -> Tensor:
    """Default (non-CUDA) implementation: :func:`seqedge.scan.recurrent_step`, then written into ``state``."""
    o, new_state = recurrent_step(q, k, v, g, beta, state, rule="delta" if delta else "gated", scale=scale)
    state.copy_(new_state)
    return o


@step_scan_op.register_kernel("cuda")
def _step_scan_cuda(q, k, v, g, beta, state, delta, scale):
    from .step_scan_triton import step_scan_cuda

    if state.dtype != torch.float32 or not state.is_contiguous():
        raise ValueError(f"the fused step updates a contiguous float32 state in place, got {state.dtype}, "
                         f"contiguous={state.is_contiguous()}; allocate it with model.init_state")
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    return step_scan_cuda(q, k, v, g, beta, state, delta, scale)


@step_scan_op.register_fake
def _step_scan_fake(q, k, v, g, beta, state, delta, scale):
    return state.new_empty(q.shape[0], q.shape[1], v.shape[-1])
