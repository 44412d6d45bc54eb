"""ExecuTorch target: one ``.pte`` program with methods ``step`` and ``chunk``, delegated to XNNPACK.

How each recipe scheme is packed here (DESIGN §3; the state I/O stays float32 in every scheme):

- ``none``: float32 weights and compute.
- ``fp16``: linear, norm and conv weights and their compute in float16 (``model.half()``); the scan, gates,
  state and logits stay float32 because the model casts them explicitly.
- ``int8``: torchao ``Int8DynamicActivationIntxWeightConfig`` with int8 weights per output channel and 8-bit
  dynamic (per-token) activations ("8da8w"), lowered to XNNPACK's quantized fully-connected kernels.
- ``int4``: the same config with int4 weights in groups of ``recipe.group_size`` input columns ("8da4w"), for
  the linears the recipe's int4 policy selects (``QuantizationRecipe.int4_applies``; the MLP by default). The
  others, and a selected linear whose input width is not a multiple of the group size, stay float32; the
  Variant lists which linears were quantized and why each other one was kept.

The embedding table is no ``nn.Linear``. A tied output head reads the same table; where the scheme packs it (int8,
and int4 where the policy selects ``embed``) it gets an ``nn.Linear`` copy of its own for torchao to pack, so a step
reads the packed head rather than the float32 table, and a table of 1 MiB or more is then packed for the lookup too
(int8 rows or int4 groups, ExecuTorch's quantized embedding kernels: export/executorch_embedding.py). Otherwise the
table stays float32.

After quantization the copy's RMSNorms, short convs, SwiGLUs, SiLUs, tied head and chunked scan are rewritten
(the scan with constant masks and prefix sums: export/xnnpack_scan.py), and the edge graphs' reshapes made
static, so that XNNPACK delegates them (export/xnnpack_friendly.py: same function, fewer portable ops between
delegates). The partitioner also takes float16 <-> float32 casts, which ExecuTorch's own config leaves on the
portable kernels, and lowers them to XNNPACK converts (export/xnnpack_cast.py). ``Variant.info["xnnpack_rewrites"]``
lists the rewrites and ``Variant.info["delegation"]`` records what stays on the portable kernels.

Both methods take a dynamic batch dimension in ``[1, ctx.max_batch]``; ExecuTorch plans memory for the upper
bound, so the bound actually compiled into the program is read back and recorded in ``Variant.info["batch"]``.
``max_batch=1`` exports a static batch of one: the chunk method's planned activations shrink by the batch bound,
which is what a single-stream app wants.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections import Counter
from typing import Any

import torch
import torch.nn as nn

from seqedge.artifact import Variant, file_record
from seqedge.quiet import quiet_libraries

from .base import ExportContext
from .entry_points import ENTRY_POINTS, entry_module, example_inputs
from .executorch_embedding import pack_embedding
from .quantization import SCHEMES, TIED_HEAD, QuantizationRecipe
from .xnnpack_cast import partitioner_configs
from .xnnpack_friendly import EDGE_PASSES, XNNPACK_REWRITES, linear_logits, xnnpack_friendly

INSTALL_HINT = "pip install executorch==1.5.1 torchao==0.18.0"
PROGRAM_FILE = "model.pte"
XNNPACK_MAX_RANK = 6      # XNNPACK tensors have at most 6 dimensions (XNN_MAX_TENSOR_DIMS)
_BOOKKEEPING_OPS = {"getitem", "sym_size.int", "executorch_call_delegate"}


def _import_executorch():
    try:
        import executorch.exir as exir
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    except ImportError as err:
        raise ImportError(f"the executorch target needs ExecuTorch ({err}); install it with `{INSTALL_HINT}`") \
            from None
    return exir, XnnpackPartitioner


def backend_config(exir) -> Any:
    """The program's config: delegate blobs as segments of their own, and inputs left out of the memory plan, so a
    call reads the caller's token and state tensors where they are instead of copying them into the program's
    arena first (the state is most of a step's bytes; the program never writes its inputs)."""
    from executorch.exir.passes import MemoryPlanningPass

    return exir.ExecutorchBackendConfig(extract_delegate_segments=True,
                                        memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False))


def _import_torchao():
    try:
        from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
        from torchao.quantization.granularity import PerAxis, PerGroup
    except ImportError as err:
        raise ImportError(f"int8/int4 ExecuTorch export needs torchao ({err}); install it with `{INSTALL_HINT}`") \
            from None
    return Int8DynamicActivationIntxWeightConfig, quantize_, PerAxis, PerGroup


# quantization ----------------------------------------------------------------------------------------------
def _float32_reason(module: nn.Module, fqn: str, recipe: QuantizationRecipe) -> str | None:
    """Why linear ``fqn`` stays float32 under ``recipe`` (int8/int4), or None when torchao quantizes it."""
    if recipe.scheme == "int4" and not recipe.int4_applies(fqn):
        return "not selected by the recipe's int4 policy"
    if recipe.scheme == "int4" and module.in_features % recipe.group_size:
        return f"input width {module.in_features} is not a multiple of group_size {recipe.group_size}"
    return None


def prepare_model(model: nn.Module, recipe: QuantizationRecipe) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` in the recipe's scheme (the caller's model is never modified) and what was done."""
    model = copy.deepcopy(model).eval()
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    if recipe.scheme == "none":
        return model, {"weights": "float32", "compute": "float32"}
    if recipe.scheme == "fp16":
        return model.half(), {"weights": "float16", "compute": "float16 (scan, gates, state, logits float32)"}
    config_cls, quantize_, per_axis, per_group = _import_torchao()
    # torchao packs linears: a tied head it should pack gets its own copy, the embedding table stays float32 (a
    # step's head then reads the packed copy, not the float table; under int8 as every other linear)
    untied = (recipe.scheme == "int8" or recipe.int4_applies(TIED_HEAD)) and model.head is None
    if untied:
        model.head = nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
        model.head.weight = nn.Parameter(model.embed.weight.detach().clone())
        # a packed weight multiplies as a linear (torchao has no transpose of it): the copy's logits as one, so
        # the quantized model runs eagerly too, not only once xnnpack_friendly has rewritten it
        model = model.with_ops(dataclasses.replace(model.ops, logits=linear_logits))
        linears["head"] = model.head
    if recipe.scheme == "int8":
        config = config_cls(weight_dtype=torch.int8, weight_granularity=per_axis(0))
        desc = {"weights": "int8 per output channel", "activations": "int8 dynamic per token"}
    else:
        group = recipe.group_size
        config = config_cls(weight_dtype=torch.int4, weight_granularity=per_group(group))
        desc = {"weights": f"int4, groups of {group} input columns", "activations": "int8 dynamic per token",
                "policy": list(recipe.int4_modules)}
    kept = {n: reason for n, m in linears.items() if (reason := _float32_reason(m, n, recipe)) is not None}
    quantized = [n for n in linears if n not in kept]
    with torch.no_grad():
        quantize_(model, config, filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn in quantized)
    # the table, read only by the lookup once the head has its own copy, packed as well where it is large
    embedding = pack_embedding(model, 8 if recipe.scheme == "int8" else 4, recipe.group_size) if untied else None
    desc.update(torchao_config=type(config).__name__, quantized_linears=len(quantized), quantized_modules=quantized,
                float32_linears=sorted(kept), float32_reasons=kept,
                float32_modules=[] if embedding else ["embed (tied head)" if model.head is None else "embed"])
    if embedding:
        desc["packed_embedding"] = embedding
    if untied:
        desc["untied_head"] = ("the tied head's packed copy; the embedding table " +
                               ("packed for the lookup (export/executorch_embedding.py)" if embedding else
                                "stays float32"))
    return model, desc


# export + lowering ----------------------------------------------------------------------------------------
def _export_entry(model: nn.Module, entry: str, max_batch: int) -> "torch.export.ExportedProgram":
    """torch.export one entry point with a dynamic batch dimension in [1, max_batch] (a static batch of 1 for
    ``max_batch=1``; the bound is checked by :class:`ExportContext`)."""
    if max_batch == 1:
        example, shapes = example_inputs(model, entry, batch_size=1), None
    else:
        example = example_inputs(model, entry, batch_size=2)
        batch = torch.export.Dim("batch", min=1, max=max_batch)
        shapes = ({0: batch}, tuple({0: batch} for _ in example[1:]))      # (tokens, *state)
    with torch.no_grad():
        return torch.export.export(entry_module(model, entry), example, dynamic_shapes=shapes, strict=False)


def _rank_limited(config_cls: type) -> type:
    """A partitioner config that also refuses nodes touching tensors of rank > 6 (XNNPACK cannot define them)."""

    def check_constraints(self, node, ep) -> bool:
        values = [node.meta.get("val")] + [a.meta.get("val") for a in node.all_input_nodes]
        if any(isinstance(v, torch.Tensor) and v.dim() > XNNPACK_MAX_RANK for v in values):
            return False
        return config_cls.check_constraints(self, node, ep)

    return type(config_cls.__name__, (config_cls,), {"check_constraints": check_constraints})


def _partitioner():
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS

    _, XnnpackPartitioner = _import_executorch()

    class Partitioner(XnnpackPartitioner):
        """XNNPACK's partitioner without a node filter on the ops kept from decomposition.

        With a filter, ExecuTorch re-checks each kept op node by node (``EDGE_DO_NOT_DECOMP``) at the price of
        one more whole-program decomposition per method, about a seventh of a real-size lowering. The kept ops
        in seqedge's graphs are linears (constant 2-D weights, rank <= 3) and torchao's (de)quantize ops of the
        linears it quantizes, which pass those checks: the delegation is the same without the filter. A linear
        XNNPACK refused would run whole on the portable kernels (``linear.out``) instead of decomposed."""

        def ops_to_not_decompose(self, ep):
            ops, _ = super().ops_to_not_decompose(ep)
            return ops, None

    configs = partitioner_configs(list(ALL_PARTITIONER_CONFIGS))
    return Partitioner(configs=[_rank_limited(c) for c in configs])


def lower(programs: dict[str, "torch.export.ExportedProgram"]):
    """The edge programs of ``programs`` (exported from an :func:`xnnpack_friendly` model), delegated to XNNPACK
    as this target lowers them: its edge passes, its partitioner."""
    exir, _ = _import_executorch()
    # IR validity checks off, as in ExecuTorch's XNNPACK recipes: the dtype verifier would specialise the
    # symbolic batch to the example's.
    return exir.to_edge_transform_and_lower(programs, transform_passes=list(EDGE_PASSES),
                                            partitioner=[_partitioner()],
                                            compile_config=exir.EdgeCompileConfig(_check_ir_validity=False))


def _op_name(node: torch.fx.Node) -> str:
    target = node.target
    name = getattr(target, "__name__", str(target))
    return name.removeprefix("aten.")


def delegation_counts(graph_module: torch.fx.GraphModule) -> dict[str, Any]:
    """Operator nodes inside XNNPACK delegates vs left on the portable CPU kernels (bookkeeping ops excluded)."""
    delegated, portable, subgraphs = Counter(), Counter(), 0
    for node in graph_module.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module_"):
            subgraphs += 1
            lowered = getattr(graph_module, node.name)
            delegated.update(_op_name(n) for n in lowered.original_module.graph.nodes
                             if n.op == "call_function" and _op_name(n) not in _BOOKKEEPING_OPS)
        elif node.op == "call_function" and _op_name(node) not in _BOOKKEEPING_OPS:
            portable[_op_name(node)] += 1
    return {"delegated_nodes": sum(delegated.values()), "portable_nodes": sum(portable.values()),
            "delegated_subgraphs": subgraphs, "portable_ops": dict(portable.most_common())}


def _compiled_batch_bound(path) -> int:
    """The batch capacity ExecuTorch planned for: the leading size of every method's inputs (all equal), read
    from the written program (memory-mapped: a real-size program is not copied)."""
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(path)
    bounds = set()
    for method in program.method_names:
        meta = program.metadata(method)
        bounds |= {meta.input_tensor_meta(i).sizes()[0] for i in range(meta.num_inputs())}
    assert len(bounds) == 1, f"inputs planned for different batch bounds {bounds}"
    return int(bounds.pop())


class ExecuTorchTarget:
    """``executorch/<tag>/model.pte``: methods ``step`` and ``chunk`` over flat tensors, XNNPACK-delegated."""

    name = "executorch"
    install_hint = INSTALL_HINT
    schemes: tuple[str, ...] = SCHEMES

    def check_available(self) -> None:
        _import_executorch()
        _import_torchao()

    def export(self, ctx: ExportContext) -> Variant:
        with quiet_libraries():        # also when called directly, not through export_model
            return self._export(ctx)

    def _export(self, ctx: ExportContext) -> Variant:
        recipe = ctx.quantization
        if recipe.scheme not in self.schemes:
            raise ValueError(f"the executorch target supports quantize {list(self.schemes)}, got {recipe.scheme!r}")
        exir, _ = _import_executorch()
        started = time.perf_counter()
        ctx.progress(f"executorch/{recipe.tag}: preparing the model ({recipe.scheme})")
        model, quant_info = prepare_model(ctx.model, recipe)
        model = xnnpack_friendly(model, inplace=True)   # after quantization: a still-tied head stays float32
        ctx.progress(f"executorch/{recipe.tag}: torch.export of {', '.join(ENTRY_POINTS)}")
        programs = {entry: _export_entry(model, entry, ctx.max_batch) for entry in ENTRY_POINTS}
        ctx.progress(f"executorch/{recipe.tag}: lowering to XNNPACK")
        edge = lower(programs)
        delegation = {e: delegation_counts(edge.exported_program(e).graph_module) for e in ENTRY_POINTS}
        ctx.progress(f"executorch/{recipe.tag}: writing {PROGRAM_FILE}")
        program = edge.to_executorch(backend_config(exir))
        del edge, programs, model        # each holds the weights again; a real-size export is bound by memory
        path = ctx.target_dir(self.name) / PROGRAM_FILE
        with open(path, "wb") as file:      # written piece by piece: ``program.buffer`` would copy it whole
            program.write_to_file(file)
        del program
        max_batch = _compiled_batch_bound(path)
        info = {
            "methods": list(ENTRY_POINTS),
            "backend": "XnnpackBackend",
            "batch": {"min": 1, "max": max_batch},
            "chunk_size": ctx.model.config.chunk_size,
            "delegation": delegation,
            "xnnpack_rewrites": XNNPACK_REWRITES,
            "xnnpack_casts": "float16 <-> float32 copies lowered as XNNPACK converts (export/xnnpack_cast.py)",
            "quantization": quant_info,
            "state_io": "float32",
            "export_seconds": round(time.perf_counter() - started, 1),
            "versions": _versions(),
        }
        return Variant(target=self.name, quantization=recipe.to_dict(),
                       files={"program": file_record(ctx.root, path)}, info=info)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": torch.__version__}
    for package in ("executorch", "torchao"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out
