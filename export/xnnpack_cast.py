"""float16 <-> float32 casts inside XNNPACK delegates (ExecuTorch).

ExecuTorch 1.5's XNNPACK partitioner takes ``_to_dim_order_copy`` only when it keeps the dtype, so every cast of a
float16 model (around the float32 norms, gates and scan) stays on the portable CPU kernels, splits the graph into
many small delegates and costs a round trip through ExecuTorch's interpreter each. XNNPACK itself converts
between float16 and float32 (``xnn_define_convert``, the node ExecuTorch already serialises as ``XNNConvert``
for quantize/dequantize), so this module adds:

- :class:`CastConfig`, a partitioner config that also accepts a contiguous float16 <-> float32 copy, and
- :class:`CastVisitor`, the ``aten._to_copy`` node visitor that serialises such a copy as ``XNNConvert`` and
  leaves every other copy (memory-format changes) to ExecuTorch's own visitor.

:func:`install` registers the visitor (ExecuTorch keeps one visitor per operator in a module-level registry;
the replacement is a subclass that behaves exactly as the original for what the original handles) and
:func:`partitioner_configs` returns ExecuTorch's configs with the copy config swapped.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import torch

CAST_DTYPES = frozenset({torch.float16, torch.float32})


def _is_float_cast(node: torch.fx.Node) -> bool:
    """A copy between float16 and float32 that changes nothing but the dtype (contiguous dim order)."""
    src = node.all_input_nodes[0].meta.get("val") if node.all_input_nodes else None
    dst = node.meta.get("val")
    if not isinstance(src, torch.Tensor) or not isinstance(dst, torch.Tensor):
        return False
    if src.dtype == dst.dtype or {src.dtype, dst.dtype} != CAST_DTYPES:
        return False
    dim_order = node.kwargs.get("dim_order")
    memory_format = node.kwargs.get("memory_format")
    contiguous = (dim_order is None or list(dim_order) == list(range(dst.dim()))) and memory_format in (
        None, torch.contiguous_format, torch.preserve_format)
    return contiguous and src.is_contiguous() and dst.is_contiguous()


@functools.cache
def _config_class() -> type:
    from executorch.backends.xnnpack.partition.config.generic_node_configs import ToDimOrderCopyConfig

    class CastConfig(ToDimOrderCopyConfig):
        """ExecuTorch's copy config, plus contiguous float16 <-> float32 casts (lowered by :class:`CastVisitor`)."""

        def check_constraints(self, node: torch.fx.Node, ep: Any) -> bool:
            if _is_float_cast(node):
                return self.check_common_constraints(node, ep)
            return super().check_constraints(node, ep)

    return CastConfig


def _visitor_class() -> type:
    importlib.import_module("executorch.backends.xnnpack.operators")     # registers ExecuTorch's own visitors
    from executorch.backends.xnnpack.operators.node_visitor import _node_visitor_dict
    from executorch.backends.xnnpack.serialization.xnnpack_graph_schema import XNNConvert, XNode
    from executorch.backends.xnnpack.utils.utils import get_input_node

    # ExecuTorch's decorator returns None, so its class is only reachable through the registry
    original = _node_visitor_dict["aten._to_copy.default"]

    class CastVisitor(original):
        """``aten._to_copy``: a float16 <-> float32 cast becomes ``XNNConvert``; anything else is unchanged."""

        target = "aten._to_copy.default"

        def define_node(self, node, xnn_graph, vals_to_ids, debug_handle) -> None:
            if not _is_float_cast(node):
                return super().define_node(node, xnn_graph, vals_to_ids, debug_handle)
            input_node = get_input_node(node, 0)
            self.define_tensor(input_node, xnn_graph, vals_to_ids)
            self.define_tensor(node, xnn_graph, vals_to_ids)
            xnn_graph.xnodes.append(XNode(
                xnode_union=XNNConvert(input_id=vals_to_ids[input_node], output_id=vals_to_ids[node], flags=0),
                debug_handle=debug_handle))

    return CastVisitor


def _keep_casts_in_copy_pass() -> None:
    """XNNPACK's ``RemoveRedundantCopyPass`` drops any copy whose input has the same memory format, which for a
    cast would change the dtype of everything after it; make it leave float casts alone."""
    from executorch.backends.xnnpack._passes.remove_redundant_copy_pass import RemoveRedundantCopyPass

    original = RemoveRedundantCopyPass._try_remove_regular_redundant_to_copy

    def try_remove(self, node, graph) -> bool:
        if _is_float_cast(node) or (isinstance(node.args[0], torch.fx.Node) and _is_float_cast(node.args[0])):
            return False
        return original(self, node, graph)

    RemoveRedundantCopyPass._try_remove_regular_redundant_to_copy = try_remove


@functools.cache
def install() -> None:
    """Register :class:`CastVisitor` for ``aten._to_copy`` in ExecuTorch's XNNPACK visitor registry and keep
    XNNPACK's copy-removal pass off float casts (idempotent). Copies upstream already delegates (memory-format
    changes) go through ExecuTorch's own code unchanged. Cached: the second call does nothing."""
    from executorch.backends.xnnpack.operators.node_visitor import register_node_visitor

    register_node_visitor(_visitor_class())
    _keep_casts_in_copy_pass()


def partitioner_configs(configs: list[type]) -> list[type]:
    """``configs`` with ExecuTorch's copy config replaced by :class:`CastConfig`; installs the visitor too."""
    from executorch.backends.xnnpack.partition.config.generic_node_configs import ToDimOrderCopyConfig

    install()
    return [_config_class() if c is ToDimOrderCopyConfig else c for c in configs]
