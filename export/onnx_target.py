"""ONNX target: ``step.onnx`` and ``chunk.onnx`` (standard ops, opset 18, dynamic batch), quantized on request.

How each scheme is packed (the recipe says *what*, this module says *how*):

- ``none``: float32 graph.
- ``fp16``: the model is cast to float16 before tracing, so weights and matmuls are float16, while the model's own
  casts keep norms, gates, the scan and the state in float32; ``tokens``, ``state.*`` and ``logits`` stay float32.
- ``int8``: ``com.microsoft::MatMulNBits`` with 8 bits for every MatMul with a constant weight: symmetric blocks
  of 128 weights along K, each with a float32 scale (:mod:`int8_blocks`), laid out by
  ``onnxruntime.quantization.matmul_nbits_quantizer``; activations int8 per block at run time (``accuracy_level``
  4, see ``_quantize_int8``). A tied head's blocks serve the token embedding too, where the table is large
  (:mod:`packed_table`): the float32 table is not kept beside them.
- ``int4``: weight-only ``com.microsoft::MatMulNBits`` (asymmetric, ``group_size`` weights per block with a float32
  scale and a uint8 zero point, chosen by ``int4_blockwise.search`` to lower each block's squared error; no
  calibration data), laid out by ``onnxruntime.quantization.matmul_nbits_quantizer``, for the MatMuls of the
  modules the recipe's int4 policy selects (``QuantizationRecipe.int4_applies``; the MLP by default); the other
  MatMuls stay float32, and ``Variant.info["int4"]`` lists both. Activations: int8 per block in ``step``
  (MatMulNBits ``accuracy_level`` 4), in ``chunk`` too from 512 wide on (:func:`int4_accuracy_level`). A packed
  tied head's 4-bit blocks serve the token embedding too, where the table is large (:mod:`packed_table`).

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. It exports both entry points faster
than ``dynamo=True`` with the same results and about the same ORT latency after ORT's graph optimisation; the
dynamo exporter also specialises the batch to 1 when traced with batch 1. ``exporter="dynamo"`` is kept as an option.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from seqedge.artifact import Variant, file_record

from . import graph_passes, int4_blockwise, int8_blocks
from .entry_points import ENTRY_POINTS, entry_module, example_inputs, input_names, output_names
from .head_rows import choose_head_rows
from .onnx_library import INSTALL_HINT, require_onnx_library
from .packed_table import gather_from_packed_head
from .quantization import QuantizationRecipe, WeightIndex, int4_split
from .shared_weights import share_weights
from .tied_head import tie_head_to_table

OPSET = 18
EXPORTERS = ("torchscript", "dynamo")
WEIGHTS_FILE = "weights.data"      # the external data both graphs of a variant read (export.shared_weights)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence tracer/deprecation warnings and library log chatter while exporting (restored afterwards)."""
    scan_logger = logging.getLogger("seqedge.scan")
    level = scan_logger.level
    previous_disable = logging.root.manager.disable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scan_logger.setLevel(logging.ERROR)
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous_disable)
            scan_logger.setLevel(level)


class OnnxTarget:
    """``<root>/onnx/<tag>/{step,chunk}.onnx`` and the weights both read, ``weights.data``; inputs ``tokens``,
    ``state.<i>``; outputs ``logits``, ``new_state.<i>``; dim 0 of every input and output is the symbolic
    ``batch``."""

    name = "onnx"
    install_hint = INSTALL_HINT
    flavour = "portable"          # graph_passes.FLAVOURS: which fused ops the cleaned graph may use
    schemes = ("none", "fp16", "int8", "int4")

    def __init__(self, exporter: str = "torchscript", opset: int = OPSET) -> None:
        if exporter not in EXPORTERS:
            raise ValueError(f"exporter must be one of {list(EXPORTERS)}, got {exporter!r}")
        if opset < 18:
            raise ValueError(f"opset must be >= 18, got {opset}")
        self.exporter = exporter
        self.opset = opset

    def check_available(self) -> None:
        require_onnx_library("onnx")
        require_onnx_library("onnxruntime")
        if self.exporter == "dynamo":
            require_onnx_library("onnxscript")

    # export ---------------------------------------------------------------------------------------------
    def export(self, ctx) -> Variant:
        scheme = ctx.quantization.scheme
        if scheme not in self.schemes:
            raise ValueError(f"the onnx target does not support quantize={scheme!r} (it supports "
                             f"{list(self.schemes)})")
        out = ctx.target_dir(self.name)
        with tempfile.TemporaryDirectory(dir=ctx.root, prefix=".onnx-work-") as work:
            work = Path(work)
            files: dict[str, Path] = {}
            int4: dict[str, dict[str, Any]] = {}
            int4_blocks: dict[bytes, tuple[Any, Any]] = {}     # step and chunk hold the same weights
            for entry in ENTRY_POINTS:
                ctx.progress(f"{self.name}/{ctx.quantization.tag}: {entry} entry point")
                with _quiet():
                    if scheme in ("none", "fp16"):
                        self._trace(ctx.model, entry, out / f"{entry}.onnx", half=scheme == "fp16")
                    else:
                        # quantize the graph as traced, then clean it: folded constants (the chunk's masks) would
                        # otherwise pass for weights, and the int4 policy finds each MatMul's module by its weight
                        source = work / f"{entry}.onnx"
                        self._trace(ctx.model, entry, source, half=False, clean=False)
                        if scheme == "int8":
                            _quantize_int8(source, out / f"{entry}.onnx")
                        else:
                            int4[entry] = _quantize_int4(source, out / f"{entry}.onnx", ctx.model, ctx.quantization,
                                                         int4_accuracy_level(entry, ctx.model.config.hidden_size),
                                                         int4_blocks)
                        # the quantizers rename dims: written again with the clean-up, one load and save
                        _rewrite(out / f"{entry}.onnx", lambda proto, entry=entry: _head_rows(_static_dims(
                            _clean(proto, self.flavour), ctx.model, entry), entry))
                files[entry] = out / f"{entry}.onnx"
        weights = share_weights(list(files.values()), WEIGHTS_FILE)
        for path in files.values():
            self._finalize(path)
        records = {entry: file_record(ctx.root, path) for entry, path in files.items()}
        records["weights"] = file_record(ctx.root, weights)
        onnx = require_onnx_library("onnx")
        graphs = {e: onnx.load(str(p), load_external_data=False) for e, p in files.items()}
        layers = ctx.model.config.num_layers
        info = {"exporter": self.exporter, "graph_flavour": self.flavour,
                "opset": max(o.version for o in graphs["step"].opset_import if o.domain in ("", "ai.onnx")),
                "op_types": {e: sorted({n.op_type for n in g.graph.node}) for e, g in graphs.items()},
                "nodes": {e: graph_passes.node_counts(g, layers) for e, g in graphs.items()},
                # what a step reads per token (the floor of seqedge.evaluate.floor): the shared weights file
                # holds the chunk's constants as well, and a small table a quantized graph keeps in float32
                "step_weight_bytes": graph_passes.weight_read_bytes(graphs["step"]),
                # states a donated step may update in place (seqedge.runtimes.ort_step_chain)
                "step_in_place_states": graph_passes.in_place_states(graphs["step"])}
        if scheme == "int4":
            info["group_size"] = ctx.quantization.group_size
            info["int4"] = _int4_summary(ctx.quantization, int4)
        return Variant(self.name, ctx.quantization.to_dict(), records, info)

    def _trace(self, model, entry: str, path: Path, *, half: bool, clean: bool = True) -> None:
        """Trace ``entry`` of ``model`` to ``path``, then (``clean``) clean the graph (:func:`graph_passes.clean`)."""
        import torch

        tensors = [*model.parameters(), *model.buffers()]
        if half or model.training or any(t.device.type != "cpu" or (t.is_floating_point() and t.dtype != torch.float32)
                                         for t in tensors):
            # a copy only where tracing needs another dtype or device: a real-size model's weights are most of
            # an export's memory
            model = copy.deepcopy(model).float().cpu().eval()
            if half:
                model = model.half()
        specs = model.state_specs
        names_in, names_out = input_names(specs), output_names(specs)
        module = entry_module(model, entry)
        # batch 2: an example of batch 1 lets a tracer specialise the batch dimension
        args = example_inputs(model, entry, batch_size=2)
        with torch.no_grad():
            if self.exporter == "torchscript":
                torch.onnx.export(module, args, str(path), input_names=names_in, output_names=names_out,
                                  opset_version=self.opset, dynamo=False, do_constant_folding=True,
                                  dynamic_axes={n: {0: "batch"} for n in names_in + names_out})
            else:
                batch = torch.export.Dim("batch", min=1, max=4096)
                shapes = ({0: batch}, tuple({0: batch} for _ in specs))
                program = torch.onnx.export(module, args, input_names=names_in, output_names=names_out,
                                            opset_version=self.opset, dynamo=True, dynamic_shapes=shapes,
                                            optimize=True, verbose=False)
                program.save(str(path))
        _rewrite(path, lambda proto: _head_rows(_clean(_static_dims(proto, model, entry), self.flavour), entry)
                 if clean else _static_dims(proto, model, entry))

    def _finalize(self, path: Path) -> None:
        """The full ``onnx.checker`` on the written graph (its weights beside it)."""
        finalize_graph(path)


def _clean(proto, flavour: str):
    """:func:`graph_passes.clean`, then the passes on the tied head and its table (:mod:`tied_head`: a float head
    reads the table; :mod:`packed_table`: a quantized head's blocks embed the tokens). Each leaves a graph it does
    not apply to as it was."""
    return gather_from_packed_head(tie_head_to_table(graph_passes.clean(proto, flavour)))


def _static_dims(proto, model, entry: str):
    """Write the static dims (all but ``batch``) into the graph's I/O types: tracers leave some symbolic (the
    conv tail is a slice whose length they do not fold); ``onnx.checker``'s shape inference then verifies them."""
    c = model.config
    tokens = ["batch"] if entry == "step" else ["batch", c.chunk_size]
    logits = ["batch", c.vocab_size] if entry == "step" else ["batch", c.chunk_size, c.vocab_size]
    shapes = [tokens] + [list(s.shape) for s in model.state_specs]
    shapes += [logits] + [list(s.shape) for s in model.state_specs]
    for value, shape in zip(list(proto.graph.input) + list(proto.graph.output), shapes):
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise RuntimeError(f"{entry}: {value.name} has rank {len(dims)}, expected {len(shape)}")
        for dim, want in zip(dims, shape):
            if isinstance(want, str):
                dim.dim_param = want
            else:
                dim.dim_value = int(want)
    return proto


def _head_rows(proto, entry: str):
    """The chunk graph's head on a choice of rows (:mod:`head_rows`), applied last: no clean-up pass sees the
    extra input or its default."""
    return choose_head_rows(proto) if entry == "chunk" else proto


def _rewrite(path: Path, rewrite) -> None:
    """Load the graph at ``path``, apply ``rewrite`` (ModelProto -> ModelProto) and save it back."""
    onnx = require_onnx_library("onnx")
    proto = rewrite(onnx.load(str(path)))
    onnx.save(proto, str(path))


def finalize_graph(path: Path, check: bool = True) -> None:
    """Run the full ``onnx.checker`` on the graph at ``path`` (its external data beside it), where ``check``:
    graphs with ONNX Runtime's own ops in the default domain, which the checker rejects, are checked by their
    target instead."""
    if check:
        require_onnx_library("onnx").checker.check_model(str(path), full_check=True)


# MatMulNBits' compute for the int8 scheme, in both entry points: int8 activations. With float32 compute (None)
# ONNX Runtime unpacks the 8-bit blocks to float32 on every call, several times slower even on a 64-token chunk.
INT8_ACCURACY_LEVEL = 4


def _quantize_int8(source: Path, dest: Path) -> None:
    """Every MatMul with a constant 2-D weight -> MatMulNBits with 8 bits (:mod:`int8_blocks`: symmetric blocks
    of 128 along K), int8 activations (:data:`INT8_ACCURACY_LEVEL`).

    The projections that read one input are merged first (:func:`graph_passes.merge_shared_matmuls`): blocks run
    along K within a column, so the merged weight packs to the same codes, in one call instead of several. No zero
    points: MatMulNBits' symmetric 8-bit path (ONNX Runtime's asymmetric int8-activation kernel for AVX2 CPUs
    without AVX-512 has had a wrong-result bug, onnxruntime#29853)."""
    onnx = require_onnx_library("onnx")
    nbits = require_onnx_library("onnxruntime.quantization.matmul_nbits_quantizer")
    to_array = require_onnx_library("onnx.numpy_helper").to_array
    model_proto = graph_passes.on_proto(onnx.load(str(source)), graph_passes.merge_shared_matmuls)
    initializers = {t.name: t for t in model_proto.graph.initializer}
    weights = {f"{n.name}_Q8": to_array(initializers[n.input[1]]) for n in model_proto.graph.node
               if n.op_type == "MatMul" and n.input[1] in initializers and len(initializers[n.input[1]].dims) == 2}
    config = nbits.DefaultWeightOnlyQuantConfig(block_size=int8_blocks.BLOCK, is_symmetric=True, bits=8,
                                                accuracy_level=INT8_ACCURACY_LEVEL, op_types_to_quantize=("MatMul",))
    _pack_matmuls(model_proto, config, weights, int8_blocks.pack, dest)


def matmul_modules(graph, model, index: WeightIndex | None = None) -> dict[str, list[str]]:
    """``{MatMul node name: module names}`` for every MatMul of ``graph`` whose weight (input B) is an
    initializer of a weight matrix's shape (or projections merged by :mod:`graph_passes`), found by value
    (:class:`WeightIndex`): the TorchScript exporter names these initializers
    ``onnx::MatMul_<n>`` and drops the ``attn`` scope from the step graph's node names, so names cannot be used.
    Raises if a constant weight matches no module, or if node names are not unique (the quantizer selects by name).
    """
    numpy_helper = require_onnx_library("onnx.numpy_helper")
    initializers = {t.name: t for t in graph.initializer}
    index = index or WeightIndex(model)
    found: dict[str, list[str]] = {}
    splits = {n.input[0]: n for n in graph.node if n.op_type == "Split" and len(n.input) == 2
              and n.input[1] in initializers}
    # a merged projection's Split may read it through the Add of the merged biases
    splits.update({n.input[0]: splits[n.output[0]] for n in graph.node if n.op_type == "Add"
                   and n.output[0] in splits and n.input[1] in initializers})
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        names = index.lookup(weight)
        if not names and node.output[0] in splits:         # projections merged by graph_passes: one per column block
            sizes = numpy_helper.to_array(initializers[splits[node.output[0]].input[1]])
            parts = [index.lookup(p) for p in np.split(weight, np.cumsum(sizes)[:-1], axis=-1)]
            names = [n for part in parts for n in part] if all(parts) else []
        if not names and not index.has_shape(weight.shape):
            continue                                         # a folded constant of the graph (a causal mask)
        if not names:
            raise RuntimeError(f"MatMul {node.name!r} has a constant weight {node.input[1]!r} {list(weight.shape)} "
                               f"that is no weight matrix of the model; the int4 module policy cannot place it")
        if not node.name or node.name in found:
            raise RuntimeError(f"MatMul node names must be unique and non-empty to select them for int4, got "
                               f"{node.name!r} twice or empty")
        found[node.name] = names
    return found


# MatMulNBits' compute per entry point. One token's step is bound by reading the weights: with int8 activations
# (level 4) ONNX Runtime runs its integer kernels on the packed blocks instead of unpacking them to float32, so the
# step is faster (benchmarks/README.md, llama.cpp section). In the 64-token chunk the gain depends on the width:
# level 4 slows a narrow chunk (the bundled model's, 192 wide) and speeds up a wide one (Mamba2-130M's, 768 wide)
# (benchmarks/probes/int4_chunk_level_ab.py: benchmarks/results/int4_chunk_level_ab.json; its matrices alone:
# int4_matmul_shapes_chunk.json). The chunk takes level 4 from this model width on; the int8 recipe runs level 4
# in both entry points at every width.
INT4_CHUNK_LEVEL4_MIN_WIDTH = 512


def int4_accuracy_level(entry: str, width: int) -> int | None:
    """MatMulNBits' ``accuracy_level`` for the int4 graphs of ``entry`` in a model ``width`` (hidden_size) wide:
    4 (int8 activations) or None (float32)."""
    return 4 if entry == "step" or width >= INT4_CHUNK_LEVEL4_MIN_WIDTH else None


def _quantize_int4(source: Path, dest: Path, model, recipe: QuantizationRecipe,
                   accuracy_level: int | None, cache: dict[bytes, tuple[Any, Any]] | None = None
                   ) -> dict[str, list[str]]:
    """MatMulNBits for the MatMuls whose module the recipe's int4 policy selects; every other MatMul is kept
    float32 (the quantizer's ``nodes_to_exclude``). ``accuracy_level``: MatMulNBits' compute type (None: float32,
    4: int8 activations); ``cache``: :func:`_int4_arrays`'s. Returns ``{"int4": [...], "float32": [...]}`` module
    names.

    The projections that read one input are merged first (:func:`graph_passes.merge_shared_matmuls`, those the
    policy packs alike): blocks run along K within a column, so the merged weight packs to the same codes, in one
    MatMulNBits call instead of several."""
    onnx = require_onnx_library("onnx")
    nbits = require_onnx_library("onnxruntime.quantization.matmul_nbits_quantizer")
    model_proto = onnx.load(str(source))
    index = WeightIndex(model)
    modules = matmul_modules(model_proto.graph, model, index)
    packs = {n.input[1]: recipe.int4_applies(modules[n.name][0]) for n in model_proto.graph.node if n.name in modules}
    model_proto = graph_passes.on_proto(model_proto,
                                        lambda m: graph_passes.merge_shared_matmuls(m, kind=packs.get))
    modules = matmul_modules(model_proto.graph, model, index)
    selected = set(int4_split(recipe, modules, "MatMul")[0])
    if not selected:
        raise ValueError(f"the int4 policy {list(recipe.int4_modules)} selects no MatMul of {source.name} "
                         f"(its weight matrices: {sorted({n for ns in modules.values() for n in ns})})")
    initializers = {t.name: t for t in model_proto.graph.initializer}
    to_array = require_onnx_library("onnx.numpy_helper").to_array
    weights = {f"{n.name}_Q4": to_array(initializers[n.input[1]])
               for n in model_proto.graph.node if n.name in selected}
    # onnxruntime's asymmetric round-to-nearest lays out the MatMulNBits nodes with uint8 zero points, which ORT's
    # CPU runs on its fast MLAS kernels (float zero points, as HQQ writes them, miss those kernels:
    # benchmarks/results/int4_policy.md), and int4_blockwise.search then sets each block's scale and zero point:
    # lower weight error than round-to-nearest, parity close to HQQ's (benchmarks/results/int4_policy.md compares
    # them all).
    config = nbits.DefaultWeightOnlyQuantConfig(block_size=recipe.group_size, is_symmetric=False,
                                                accuracy_level=accuracy_level, op_types_to_quantize=("MatMul",))
    _pack_matmuls(model_proto, config, weights, _int4_arrays(recipe.group_size, cache), dest,
                  keep=set(modules) - selected)
    return {"int4": sorted({n for node in selected for n in modules[node]}),
            "float32": sorted({n for node in set(modules) - selected for n in modules[node]})}


def _int4_arrays(group: int, cache: dict[bytes, tuple[Any, Any]] | None = None) -> Callable[[Any], tuple[Any, ...]]:
    """Weight -> MatMulNBits' B, scales and zero points from :func:`int4_blockwise.search`'s blocks. ``cache``
    keeps each weight's search result by its bytes: the step and chunk graphs hold the same weights, and the
    search is most of an int4 export's time."""
    def arrays(w):
        key = hashlib.sha256(w.tobytes()).digest() + repr((w.shape, w.dtype.str, group)).encode()
        found = cache.get(key) if cache is not None else None
        if found is None:
            found = int4_blockwise.search(w, group)
            if cache is not None:
                cache[key] = found
        return int4_blockwise.pack(w, *found, group)

    return arrays


def _pack_matmuls(model_proto, config, weights: dict[str, Any], arrays_of: Callable[[Any], tuple[Any, ...]],
                  dest: Path, keep: set[str] | frozenset[str] = frozenset()) -> None:
    """onnxruntime's MatMulNBits quantizer with ``config`` on ``model_proto``, leaving the MatMuls ``keep`` names
    alone; checks that it packed exactly the nodes ``weights`` names (the quantizer's ``{name}_Q{bits}``: the
    float weight ``[K, N]``) and kept ``keep``, writes ``arrays_of``'s numbers into them (:func:`_refit_blocks`)
    and saves the graph to ``dest``."""
    nbits = require_onnx_library("onnxruntime.quantization.matmul_nbits_quantizer")
    quantizer = nbits.MatMulNBitsQuantizer(model_proto, algo_config=config, nodes_to_exclude=sorted(keep))
    quantizer.process()
    graph = quantizer.model.model.graph
    packed = {n.name for n in graph.node if n.op_type == "MatMulNBits"}
    plain = {n.name for n in graph.node if n.op_type == "MatMul"}
    if packed != set(weights) or not keep <= plain:
        raise RuntimeError(f"MatMulNBits quantization of {dest.name} packed {sorted(packed)}, expected "
                           f"{sorted(weights)} (and {sorted(keep)} kept as MatMul)")
    _refit_blocks(graph, weights, arrays_of)
    quantizer.model.save_model_to_file(str(dest), False)


def _refit_blocks(graph, weights: dict[str, Any], arrays_of: Callable[[Any], tuple[Any, ...]]) -> None:
    """Replace the inputs after A (B, scales and any zero points) of each MatMulNBits node ``weights`` names (its
    float weight ``[K, N]``) with ``arrays_of(weight)``, in the layout and shapes onnxruntime wrote."""
    numpy_helper = require_onnx_library("onnx.numpy_helper")
    initializers = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type != "MatMulNBits":
            continue
        w = weights[node.name]
        if w.ndim != 2:
            raise RuntimeError(f"{node.name}: MatMulNBits packs 2-D weights [K, N], got shape {list(w.shape)}")
        arrays = arrays_of(w)
        if len(node.input) != 1 + len(arrays):
            raise RuntimeError(f"{node.name} has inputs {list(node.input)}; the packing writes B, scales"
                               f"{' and zero points' if len(arrays) == 3 else ''}")
        for name, array in zip(node.input[1:], arrays):
            old = numpy_helper.to_array(initializers[name])
            if old.shape != array.shape or old.dtype != array.dtype:
                raise RuntimeError(f"{node.name}: onnxruntime wrote {name} as {old.dtype}{list(old.shape)}, "
                                   f"the packing {array.dtype}{list(array.shape)}")
            initializers[name].CopyFrom(numpy_helper.from_array(array, name))


def _int4_summary(recipe: QuantizationRecipe, per_entry: dict[str, dict[str, list[str]]]) -> dict[str, Any]:
    """What the int4 variant packed: the policy, and which modules are MatMulNBits vs float32 MatMul."""
    return {"policy": list(recipe.int4_modules),
            "packing": "MatMulNBits, asymmetric with uint8 zero points (int4_blockwise.search), weight-only",
            "quantized_modules": sorted({n for e in per_entry.values() for n in e["int4"]}),
            "float32_modules": sorted({n for e in per_entry.values() for n in e["float32"]}),
            "float32_reason": "not selected by the recipe's int4 policy (see QuantizationRecipe)"}
