"""Export-only rewrites that let XNNPACK take ops it would otherwise leave on ExecuTorch's portable kernels.

The ExecuTorch target lowers ``step`` and ``chunk`` with a dynamic batch. XNNPACK's partitioner (executorch
1.5.1, ``backends/xnnpack/partition/config``) then refuses, and leaves between delegate calls:

- ``mean.dim`` unless it averages the two innermost dims of a 4-D tensor with keepdim (RMSNorm averages the
  last dim of a 3-D or 4-D tensor);
- ``mm`` whose weight is not a static parameter (the tied head multiplies by ``embed.weight.t()``);
- ``view_copy`` whose shape names the symbolic batch (``torch.export`` writes ``reshape(-1, ...)`` as
  ``view(x, [sym_size, ...])``; XNNPACK's reshape takes constant sizes with at most one inferred ``-1``), and
  ``unsqueeze_copy`` on any but the last dim;
- ``slice_copy`` of a tensor with a symbolic size and every ``split_with_sizes_copy`` (the short conv's new
  tail, the q/k/v split, the SwiGLU's gate/up split, the chunked scan's reference rows);
- ``expand_copy`` (grouped keys repeated per value head, a per-head gate over the key dims), and the
  ``gt``/``where``/``log1p`` that ``F.softplus`` decomposes into (the step-size gates: they stay, see below);
- ``arange``, comparisons, ``where`` and ``cumsum`` (the chunked scan's masks and prefix sums);
- ``_to_dim_order_copy`` that changes the dtype (every float16/float32 cast; ``F.silu`` of a float16 tensor
  decomposes into a float32 upcast, the product, and a cast back).

Every portable op between two delegates costs a delegate exit and re-entry, so these few ops split each
program into dozens of XNNPACK subgraphs (the lowering's time goes by nodes, not subgraphs:
benchmarks/results/executorch_lower_time.md). Two rewrites and two edge passes remove most of them, each computing
the same function (the float16 SiLU up to one float16 rounding):

- :func:`xnnpack_friendly`: a copy of the model whose RMSNorm modules take the mean of squares as a linear
  over a ``1 / n`` row (other RMSNorms, e.g. a mixer's q/k norms, average over a ``[-1, L, 1, n]`` view), whose
  tied head is ``F.linear(x, embed.weight)`` (a linear over the parameter itself), whose short convs pick the
  new tail with a 0/1 matrix (exact; one token's conv without concatenation), whose SwiGLUs run gate and up as
  two linears over the row blocks of the fused weight (quantized ones too, where the blocks multiply exactly as
  the whole), whose SiLUs are ``x * sigmoid(x)`` in the input's dtype (no float32 round trip
  in float16), whose expands are products with ones, whose one-token scan contracts with ``bmm`` (not an
  einsum's permutes), and whose mixers run :class:`~seqedge.export.xnnpack_scan.StaticMaskScan` on the sequence
  path (export/xnnpack_scan.py: the chunked scan with constant masks, prefix sums as a 0/1 linear). Applied
  after quantization, so a head that is still tied stays float32 and only the recipe's linears are quantized.
- :func:`static_reshapes`: an edge-dialect graph pass that writes every pure reshape (``view_copy``,
  ``unsqueeze_copy``, ``squeeze_copy``, ``alias_copy``, ``select_copy`` of a size-1 dim, ``expand_copy`` to
  its own shape) whose output has at most one symbolic size as ``view_copy`` with constant sizes and ``-1``,
  and reads a view of a view from the first one's input (one reshape, not a chain);
- :func:`split_as_slices`: an edge pass that writes a split of a static-shape tensor as slices, which XNNPACK
  takes (with a symbolic batch it refuses both, and the one split stays).

What stays portable (measured on the bundled model, executorch 1.5.1; ``Variant.info["delegation"]`` lists it
per program): in ``step`` and ``chunk`` the embedding and, with a dynamic batch, the q/k/v split; the ones of
the broadcasts (a ``full`` without inputs, which splits no delegate); for the delta rule also the L2
normalisation of q and k and, in ``chunk``, the block slices and zero blocks of ``(I + M)^-1``; and in float16
the casts around the float32 norms, gates and scan. Unbounded-gate mixers (softplus) also leave the softplus
threshold (``gt``, ``where``, ``log1p``: one delegate boundary per layer) and their q/k RMS norms' ``sum``; their
scan is delegated as the bounded one (the segment-sum form of :class:`~seqedge.export.xnnpack_scan.StaticMaskScan`).
The softplus stays portable on purpose: spelled with ``log``, XNNPACK's approximate ``log`` is too coarse near 1
where softplus is small (a Mamba2's typical ``dt``), enough to break a deep Mamba2's float32 parity budget;
a series for ``log1p`` in delegated ops is accurate but adds about 15 nodes a layer to every lowering pass.

The eager model (``seqedge``) is never modified; tests/test_xnnpack_friendly.py checks these rewrites against
it and tests/test_xnnpack_scan.py the scan against the chunked and reference scans.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from seqedge.layers import RMSNorm, SequentialAttention, ShortConv, SwiGLU
from seqedge.model import SequentialAttentionModel
from seqedge.ops import MixerOps, at_least_f32
from seqedge.scan import recurrent_step

from .xnnpack_scan import StaticMaskAttention

# What the ExecuTorch Variant records as applied (Variant.info["xnnpack_rewrites"]).
XNNPACK_REWRITES = ("RMSNorm modules' mean of squares + eps as a linear over a 1/n row, bias eps",
                    "other RMSNorms' mean over a [-1, L, 1, n] view", "tied head as F.linear(x, embed.weight)",
                    "short-conv tail picked by a 0/1 linear", "one token's short conv without concatenation",
                    "SwiGLU gate/up as two linears over row blocks",
                    "SiLU as x * sigmoid(x)", "expand as a product with ones", "one-token scan contractions as bmm",
                    "chunked scan with constant masks, prefix sums and row picks",
                    "pure reshapes as static view_copy, view chains as one view",
                    "static-shape splits as slices")


def _silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU as ``x * sigmoid(x)`` in x's dtype.

    ``F.silu`` of a float16 tensor is decomposed with a float32 upcast: two dtype casts that stay on the portable
    kernels. This form rounds the sigmoid to float16 before the product (one more float16 rounding); in float32
    it is the decomposition ``F.silu`` gets anyway.
    """
    return x * torch.sigmoid(x)


class RowMeanRMSNorm(nn.Module):
    """:class:`seqedge.layers.RMSNorm` with the mean of squares plus eps as a linear over a constant ``[1, n]``
    row of ``1 / n`` with bias eps: one XNNPACK fully-connected op where the 4-D mean and the add take six (two
    reshapes, two transposes, the mean, the add; every op costs each call its share of XNNPACK's per-call
    reshape of the runtime).

    Same weight, eps, dtype handling and function: ``x * rsqrt(mean(x^2) + eps) * weight`` over the last dim
    (or over each of ``groups`` equal slices of it).
    """

    def __init__(self, norm: RMSNorm) -> None:
        super().__init__()
        self.eps = norm.eps
        self.groups = norm.groups
        self.weight = norm.weight
        n = norm.weight.shape[-1] // norm.groups
        self.mean_row = nn.Parameter(torch.full((1, n), 1.0 / n), requires_grad=False)
        self.eps_bias = nn.Parameter(torch.full((1,), float(norm.eps)), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups == 1:
            return self._norm(x, self.weight)
        grouped = x.unflatten(-1, (self.groups, -1))                          # [..., groups, dim / groups]
        return self._norm(grouped, self.weight.view(self.groups, -1)).flatten(-2)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        xf = x.to(at_least_f32(x.dtype))
        ms = F.linear(xf * xf, self.mean_row.to(xf.dtype), self.eps_bias.to(xf.dtype))     # mean + eps [..., 1]
        return (xf * torch.rsqrt(ms)).to(x.dtype) * weight


def pooled_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """:func:`seqedge.ops.rms_norm` with the mean over a ``[-1, L, 1, n]`` view (XNNPACK's 4-D mean)."""
    xf = x.to(at_least_f32(x.dtype))
    n = int(x.shape[-1])
    rows = 1
    for d in x.shape[1:-1]:                   # static in exported graphs: only the batch stays symbolic
        rows *= int(d)
    sq = (xf * xf).reshape(-1, rows, 1, n)                              # [B, L, 1, n]
    ms = sq.mean(dim=(2, 3), keepdim=True).reshape(*(-1, *x.shape[1:-1]), 1)   # [B, ..., 1]
    return (xf * torch.rsqrt(ms + eps)).to(x.dtype) * weight


class PickedTailConv(nn.Module):
    """:class:`seqedge.layers.ShortConv` whose new tail (the last K-1 conv inputs) is picked by a linear.

    XNNPACK slices only tensors of static shape; a 0/1 matrix ``[K-1, L]`` picks the same columns exactly
    (each output is one input times 1 plus zeros). Built for the input lengths of ``step`` (L = K) and
    ``chunk`` (L = K-1+chunk_size); other lengths slice, as the original does.
    """

    def __init__(self, conv: ShortConv, lengths: tuple[int, ...]) -> None:
        super().__init__()
        self.kernel = conv.kernel
        self.weight = conv.weight
        self.bias = conv.bias
        dtype = conv.weight.dtype                  # the model's float dtype: no cast between pick and linear
        self.picks = nn.ParameterDict({str(n): nn.Parameter(self._pick(n, conv.kernel).to(dtype), requires_grad=False)
                                       for n in lengths})
        # the one-token form's constants (see _one_token)
        k = conv.kernel
        w = conv.weight.detach()[:, 0]                                              # [ch, K]
        constant = functools.partial(nn.Parameter, requires_grad=False)
        self.w_past, self.w_now = constant(w[:, :k - 1].clone()), constant(w[:, k - 1:].clone())
        self.sum_row = constant(torch.ones(1, k - 1, dtype=dtype))
        self.shift = constant(torch.eye(k, k - 1, dtype=dtype)[1:])                  # row j picks tail column j+1
        self.last = constant((torch.arange(k - 1) == k - 2).to(dtype))
        self.bias_col = None if conv.bias is None else constant(conv.bias.detach()[:, None].clone())

    @staticmethod
    def _pick(length: int, kernel: int) -> torch.Tensor:
        pick = torch.zeros(kernel - 1, length)
        pick[:, length - kernel + 1:] = torch.eye(kernel - 1)                # row i selects column L-K+1+i
        return pick

    def forward(self, x: torch.Tensor, tail: torch.Tensor, *, step: bool = False):
        """As :meth:`seqedge.layers.ShortConv.forward` (one form for both paths: the picks know each length)."""
        if step and x.shape[1] == 1:
            return self._one_token(x, tail)
        xc = torch.cat([tail.to(x.dtype), x.transpose(1, 2)], dim=-1)              # [B, ch, K-1+T]
        bias = None if self.bias is None else self.bias.to(x.dtype)
        y = F.conv1d(xc, self.weight.to(x.dtype), bias, groups=self.weight.shape[0])  # [B, ch, T]
        key = str(int(xc.shape[-1]))
        new_tail = (F.linear(xc, self.picks[key].to(xc.dtype)) if key in self.picks
                    else xc[..., -(self.kernel - 1):])                              # [B, ch, K-1]
        return _silu(y).transpose(1, 2), new_tail.to(at_least_f32(x.dtype))

    def _one_token(self, x: torch.Tensor, tail: torch.Tensor):
        """One token without the concatenation of tail and input, which XNNPACK copies strided (the costliest
        op of a small model's step): the conv as the past taps' products summed by a linear over ones plus the
        new input's tap, the new tail as the old one shifted by a 0/1 linear plus the input in the last place
        (exact, as the pick)."""
        dtype = x.dtype
        col = x.reshape(-1, x.shape[-1], 1)                                          # [B, ch, 1]
        past = tail.to(dtype)
        y = F.linear(past * self.w_past.to(dtype), self.sum_row.to(dtype)) + col * self.w_now.to(dtype)
        if self.bias_col is not None:
            y = y + self.bias_col.to(dtype)
        new_tail = F.linear(past, self.shift.to(dtype)) + col * self.last.to(dtype)  # [B, ch, K-1]
        return _silu(y).reshape(-1, 1, x.shape[-1]), new_tail.to(at_least_f32(dtype))


class SplitSwiGLU(nn.Module):
    """:class:`seqedge.layers.SwiGLU` with its fused gate/up linear as two linears over the two row blocks
    (:func:`row_blocks`: float weights, and quantized ones whose row blocks multiply as the whole does)."""

    def __init__(self, mlp: SwiGLU, blocks: tuple[torch.Tensor, torch.Tensor]) -> None:
        super().__init__()
        h = mlp.hidden
        self.gate = nn.Linear(mlp.gate_up.in_features, h, bias=False)
        self.up = nn.Linear(mlp.gate_up.in_features, h, bias=False)
        self.gate.weight = nn.Parameter(blocks[0], requires_grad=False)
        self.up.weight = nn.Parameter(blocks[1], requires_grad=False)
        self.down = mlp.down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(_silu(self.gate(x)) * self.up(x))


def row_blocks(linear: nn.Linear, rows: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The weight of ``linear`` cut after ``rows`` rows, or None where it cannot be.

    A float weight is cut as it is. A quantized one (a torchao tensor subclass) is cut where the subclass slices
    rows and the two blocks, on a random input, give the whole's product (per-row scales travel with their
    rows); otherwise it stays whole and its output is split between delegates."""
    weight = linear.weight.detach()
    if type(weight) is torch.Tensor:
        return weight[:rows].clone(), weight[rows:].clone()
    try:
        top, bottom = weight[:rows], weight[rows:]
        x = torch.randn(3, weight.shape[1], generator=torch.Generator().manual_seed(0)).to(weight.dtype)
        whole = F.linear(x, weight)
        parts = torch.cat([F.linear(x, top), F.linear(x, bottom)], dim=-1)
    except (RuntimeError, NotImplementedError, TypeError, IndexError):
        return None
    scale = whole.abs().max().clamp_min(1e-30)
    return (top, bottom) if bool(((parts - whole).abs().max() / scale) <= 1e-6) else None


def _broadcast(x: torch.Tensor, *sizes: int) -> torch.Tensor:
    """``x.expand(*sizes)`` as a product with ones (XNNPACK has no broadcast-to: an expand stays on the portable
    kernels, between two delegates; its multiply broadcasts). The ones are a constant ``full`` without inputs,
    which does not split the delegate. Exact: x times 1."""
    ones = [1 if n == -1 or n == have else n for n, have in zip(sizes, x.shape)]
    return x * torch.ones(ones, dtype=x.dtype) if any(n != 1 for n in ones) else x


def _bmm_readout(x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """:func:`seqedge.scan.recurrent.einsum_readout` as one batched matmul over static reshapes (the einsum
    decomposes into permutes and views around its bmm, five more nodes per contraction)."""
    H, dk, dv = (int(n) for n in state.shape[1:])
    return torch.bmm(x.reshape(-1, 1, dk), state.reshape(-1, dk, dv)).reshape(-1, H, dv)


def linear_logits(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """:func:`seqedge.ops.tied_logits` as a linear over the weight parameter itself (XNNPACK's static weight)."""
    return F.linear(x, weight.to(x.dtype)).to(at_least_f32(x.dtype))


# The ops of this flavour: SiLU without a float32 round trip, expands as products with ones, the one-token scan's
# contractions as bmm, the 4-D mean RMSNorm (for norms that are not RMSNorm modules), the head as a linear. The
# pieces that need their own constants or weights (row-mean norms, conv tail picks, split gate/up, static-mask
# scan) are modules that :func:`xnnpack_friendly` puts in place of the model's.
XNNPACK_OPS = MixerOps(name="xnnpack", silu=_silu, expand=_broadcast,
                       rms_norm=pooled_rms_norm, logits=linear_logits,
                       step_scan=functools.partial(recurrent_step, readout=_bmm_readout))


def xnnpack_friendly(model: SequentialAttentionModel, *, inplace: bool = False) -> SequentialAttentionModel:
    """``model`` built with :data:`XNNPACK_OPS`, with XNNPACK-friendly norms, convs, MLPs and scans in place of its
    own modules (in ``model`` itself if ``inplace``, else in a copy; the returned model shares their weights).

    Norm, conv and embedding weights are shared with the modules they replace (a float gate/up weight is split
    into two row blocks); outputs equal the original's up to float rounding (the mean's summation order; the
    conv tail pick is exact). Apply it after quantization: quantized linears are kept as they are.
    """
    model = model if inplace else copy.deepcopy(model)
    c = model.config
    lengths = (c.conv_kernel, c.conv_kernel - 1 + c.chunk_size)          # step and chunk conv inputs
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, RMSNorm):
                setattr(parent, name, RowMeanRMSNorm(child))
            elif isinstance(child, ShortConv):
                setattr(parent, name, PickedTailConv(child, lengths))
            elif isinstance(child, SwiGLU) and (blocks := row_blocks(child.gate_up, child.hidden)) is not None:
                setattr(parent, name, SplitSwiGLU(child, blocks))
            elif isinstance(child, SequentialAttention):    # bounded or segment-sum form, from the config
                setattr(parent, name, StaticMaskAttention(child))
    return model.with_ops(XNNPACK_OPS)


# edge-dialect graph pass ----------------------------------------------------------------------------------
def _reshape_targets() -> dict[object, str]:
    from executorch.exir.dialects._ops import ops as exir_ops

    aten = exir_ops.edge.aten
    return {aten.view_copy.default: "view", aten.unsqueeze_copy.default: "view",
            aten.squeeze_copy.dims: "view", aten.squeeze_copy.dim: "view", aten.alias_copy.default: "view",
            aten.select_copy.int: "select", aten.expand_copy.default: "expand"}


def _is_pure_reshape(node: torch.fx.Node, kind: str) -> bool:
    src, out = node.args[0].meta.get("val"), node.meta.get("val")
    if not isinstance(src, torch.Tensor) or not isinstance(out, torch.Tensor):
        return False
    if kind == "select":                                   # picking index 0 of a size-1 dim drops the dim
        dim = node.args[1] % src.dim()
        return isinstance(src.shape[dim], int) and src.shape[dim] == 1
    if kind == "expand":                                   # an expand to the input's own shape copies it
        return [str(d) for d in src.shape] == [str(d) for d in out.shape]
    return True


def _static_shape(out: torch.Tensor) -> list[int] | None:
    """Constant sizes with ``-1`` for the one symbolic size; None if there are several or a zero size."""
    shape = [d if isinstance(d, int) else -1 for d in out.shape]
    if shape.count(-1) > 1 or 0 in shape:
        return None
    return shape


def _same_shape(a: torch.fx.Node, b: torch.fx.Node) -> bool:
    va, vb = a.meta.get("val"), b.meta.get("val")
    return (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)
            and [str(d) for d in va.shape] == [str(d) for d in vb.shape])


def _fold_view_chains(graph: torch.fx.Graph, view) -> bool:
    """A view of a view reads the first one's input (a reshape of a reshape is one reshape), and a view to its
    input's own shape is its input; the views left without users go. Views the graph outputs are kept (the
    program's signature names them)."""
    changed = False
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != view:
            continue
        src = node.args[0]
        while isinstance(src, torch.fx.Node) and src.op == "call_function" and src.target == view:
            src = src.args[0]
        if src is not node.args[0]:
            node.args = (src, *node.args[1:])
            changed = True
        if _same_shape(node, src) and not any(user.op == "output" for user in node.users):
            node.replace_all_uses_with(src)
            graph.erase_node(node)
            changed = True
    return changed


def static_reshapes(graph_module: torch.fx.GraphModule):
    """Rewrite pure reshapes as ``view_copy`` with constant sizes and at most one ``-1`` (see module doc)."""
    from executorch.exir.dialects._ops import ops as exir_ops
    from executorch.exir.pass_base import PassResult

    view = exir_ops.edge.aten.view_copy.default
    targets = _reshape_targets()
    changed = False
    for node in list(graph_module.graph.nodes):
        kind = targets.get(node.target) if node.op == "call_function" else None
        if kind is None or not _is_pure_reshape(node, kind):
            continue
        shape = _static_shape(node.meta["val"])
        if shape is None or (node.target == view and list(node.args[1]) == shape):
            continue
        with graph_module.graph.inserting_before(node):
            new = graph_module.graph.call_function(view, (node.args[0], shape))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        graph_module.graph.erase_node(node)
        changed = True
    changed |= _fold_view_chains(graph_module.graph, view)
    if changed:
        graph_module.graph.eliminate_dead_code()
        graph_module.recompile()
    return PassResult(graph_module, changed)


def split_as_slices(graph_module: torch.fx.GraphModule):
    """Rewrite each ``split_with_sizes_copy`` of a static-shape tensor as one ``slice_copy`` per piece used (see
    module doc)."""
    import operator

    from executorch.exir.dialects._ops import ops as exir_ops
    from executorch.exir.pass_base import PassResult

    aten = exir_ops.edge.aten
    changed = False
    for node in list(graph_module.graph.nodes):
        if node.op != "call_function" or node.target != aten.split_with_sizes_copy.default:
            continue
        if not all(user.op == "call_function" and user.target is operator.getitem for user in node.users):
            continue
        src, sizes = node.args[0], list(node.args[1])
        if not all(isinstance(n, int) for n in src.meta["val"].shape):
            continue                       # XNNPACK slices only static shapes: one portable split is fewer nodes
        dim = (node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)) % src.meta["val"].dim()
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        for user in list(node.users):
            i = user.args[1]
            with graph_module.graph.inserting_before(user):
                piece = graph_module.graph.call_function(aten.slice_copy.Tensor,
                                                         (src, dim, starts[i], starts[i] + sizes[i]))
            piece.meta = dict(user.meta)
            user.replace_all_uses_with(piece)
            graph_module.graph.erase_node(user)
        graph_module.graph.erase_node(node)
        changed = True
    if changed:
        graph_module.recompile()
    return PassResult(graph_module, changed)


# The edge passes of the executorch target, in order.
EDGE_PASSES = (static_reshapes, split_as_slices)
