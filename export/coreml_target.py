"""Core ML target: one ``model.mlpackage`` (iOS 18 / macOS 15) with ``step`` and ``chunk`` functions sharing weights.

    step(tokens[1] int32, state_0, ..., state_<n-1>)     -> (logits[1, V] float32, new_state_0, ...)
    chunk(tokens[1, C] int32, state_0, ..., state_<n-1>) -> (logits[1, C, V] float32, new_state_0, ...)

Core ML feature names cannot contain ``.``, so ``state.<i>`` is written ``state_<i>`` (the mapping is recorded in
``Variant.info["feature_names"]``); Core ML takes int32 token ids, not int64. The state stays explicit float32 I/O
(Core ML's own ``StateType`` holds fp16 only). Batch is fixed at 1.

Precision: ``none`` computes in float32; ``fp16``, ``int8`` and ``int4`` compute in float16. ``int8`` also
compresses the weights of linear, matmul and embedding ops (per output channel); ``int4`` compresses the weights
of the modules the recipe's int4 policy selects (``QuantizationRecipe.int4_applies``; the MLP by default) in
blocks of ``group_size`` input columns and keeps the others float16 (``Variant.info["int4"]`` lists both). Core
ML dequantises compressed weights at load.

Both functions trace the same entry modules as every other target: ``step`` the recurrent form, ``chunk`` the
chunked scan (its intermediates stay at rank <= 5, the most Core ML allows).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

from seqedge.artifact import Variant, file_record
from seqedge.state import StateSpec

from .base import ExportContext
from .entry_points import entry_module, example_inputs
from .quantization import QuantizationRecipe, WeightIndex, int4_selection, int4_split

PACKAGE = "model.mlpackage"
FUNCTIONS = ("step", "chunk")
BATCH_SIZE = 1
NEURAL_ENGINE_MULTIPLE = 32
INSTALL_HINT = "pip install 'coremltools==9.0'  (or: pip install 'seqedge[coreml]')"


def feature_name(name: str) -> str:
    """Core ML feature name of a graph name (``state.0`` -> ``state_0``; Core ML names have no dots)."""
    return name.replace(".", "_")


def neural_engine_notes(specs: list[StateSpec]) -> list[str]:
    """Where state dims (batch aside) are not multiples of 32, which the Neural Engine prefers."""
    notes = []
    for spec in specs:
        odd = [int(d) for d in spec.shape[1:] if int(d) % NEURAL_ENGINE_MULTIPLE]
        if odd:
            notes.append(f"{spec.name} ({spec.kind}, shape {list(spec.shape)}): dims {odd} are not multiples "
                         f"of {NEURAL_ENGINE_MULTIPLE}")
    return notes


@contextlib.contextmanager
def _converter_fixes() -> Iterator[None]:
    """Fix two coremltools 9.0 TorchScript converters for this conversion only, restoring them afterwards.

    - ``int`` of a folded one-element shape (``groups=x.shape[1]``) calls ``int(ndarray)``, an error since
      NumPy 2.4;
    - ``cumsum`` rejects negative ``dim`` below -1.
    """
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import ops
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY as registry

    saved = {name: registry.name_to_func_mapping[name] for name in ("int", "cumsum")}

    def int_fixed(context, node):
        x = ops._get_inputs(context, node, expected=1)[0]
        if x.can_be_folded_to_const() and np.ndim(x.val) > 0 and np.size(x.val) == 1:
            context.add(mb.const(val=np.int32(np.asarray(x.val).reshape(()).item()), name=node.name), node.name)
        else:
            saved["int"](context, node)

    def cumsum_fixed(context, node):
        inputs = ops._get_inputs(context, node, min_expected=2)
        x, dim = inputs[0], int(inputs[1].val)
        dtype = inputs[2] if len(inputs) > 2 else None
        if dtype is not None and dtype.val is not None:
            x = mb.cast(x=x, dtype=ops.NUM_TO_DTYPE_STRING[dtype.val])
        context.add(mb.cumsum(x=x, axis=dim % x.rank, name=node.name), node.name)

    registry.set_func_by_name(int_fixed, "int")
    registry.set_func_by_name(cumsum_fixed, "cumsum")
    try:
        yield
    finally:
        for name, func in saved.items():
            registry.set_func_by_name(func, name)


def _const_ops(mlmodel: Any) -> Iterator[Any]:
    """Every ``const`` op of ``mlmodel``'s MIL program, nested blocks included."""

    def walk(block: Any) -> Iterator[Any]:
        for op in block.operations:
            for inner in op.blocks:
                yield from walk(inner)
            if op.op_type == "const":
                yield op

    # The converter keeps the MIL program on the model it returns; ``_get_mil_internal()`` would deep-copy it,
    # which overflows the recursion limit on a real-size program.
    for function in mlmodel._mil_program.functions.values():
        yield from walk(function)


def weight_consts(mlmodel: Any, model) -> dict[str, list[str]]:
    """``{const name: module names}`` of the weight matrices in a converted (uncompressed) ``mlmodel``: consts
    feeding a linear, matmul or gather whose value is a model weight cast to the program's dtype
    (:class:`WeightIndex`). Const names come from traced parameter names and may change between coremltools
    versions; values do not.

    The program's own const ops are walked rather than ``coremltools.optimize.coreml.get_weights_metadata``'s
    table: that one fails on a const feeding an op with a list operand (a ``concat``, as Mamba2's conv step has)."""
    import numpy as np

    index = WeightIndex(model)
    found = {}
    for op in _const_ops(mlmodel):
        out = op.outputs[0]
        if isinstance(out.val, np.ndarray) and any(child.op_type in WEIGHT_OPERANDS for child in out.child_ops):
            modules = index.lookup(np.asarray(out.val))
            if modules:
                found[op.name] = modules
    return found


def _compression_config(recipe: QuantizationRecipe, selected: list[str]) -> Any:
    """int8: every linear/matmul weight and the embedding table; int4: exactly the ``selected`` consts."""
    import coremltools.optimize.coreml as cto

    if recipe.scheme == "int8":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                         weight_threshold=0)
        # The matrices (linear/matmul weights, the embedding table: gather) and the short conv's taps: Core ML
        # shares equal constants between ops (a zero conv bias and a bias-free linear's zero bias), and refuses a
        # shared constant whose ops are configured differently. Norm weights stay fp16.
        return cto.OptimizationConfig(op_type_configs={"linear": op, "matmul": op, "gather": op, "conv": op})
    op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                     block_size=recipe.group_size, weight_threshold=0)
    return cto.OptimizationConfig(op_name_configs={name: op for name in selected})


class CoreMLTarget:
    name = "coreml"
    install_hint = INSTALL_HINT
    schemes = ("none", "fp16", "int8", "int4")

    def check_available(self) -> None:
        try:
            import coremltools  # noqa: F401
        except ImportError:
            raise ImportError(f"the coreml target needs coremltools: {INSTALL_HINT}") from None

    def _convert(self, ctx: ExportContext, entry: str, out: Path) -> dict[str, list[str]]:
        """Convert one entry point to ``out``; for int4, return ``{weight const: module names}``."""
        import coremltools as ct
        import numpy as np

        model = ctx.model.eval()
        specs = model.state_specs
        C = model.config.chunk_size
        module = entry_module(model, entry)
        args = example_inputs(model, entry, batch_size=BATCH_SIZE, chunk_size=C)
        with torch.no_grad():
            traced = torch.jit.trace(module, args, check_trace=False)
        inputs = [ct.TensorType(name="tokens", shape=tuple(args[0].shape), dtype=np.int32)]
        inputs += [ct.TensorType(name=feature_name(s.name), shape=s.concrete_shape(BATCH_SIZE), dtype=np.float32)
                   for s in specs]
        outputs = [ct.TensorType(name=n, dtype=np.float32)
                   for n in ["logits"] + [feature_name(f"new_{s.name}") for s in specs]]
        scheme = ctx.quantization.scheme
        precision = ct.precision.FLOAT32 if scheme == "none" else ct.precision.FLOAT16
        with _converter_fixes(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            mlmodel = ct.convert(traced, inputs=inputs, outputs=outputs, convert_to="mlprogram",
                                 minimum_deployment_target=ct.target.iOS18, compute_precision=precision,
                                 skip_model_load=True)
        consts = weight_consts(mlmodel, model) if scheme == "int4" else {}
        selected = _int4_consts(ctx, consts, entry) if scheme == "int4" else []
        if scheme in ("int8", "int4"):
            import coremltools.optimize.coreml as cto

            mlmodel = cto.linear_quantize_weights(mlmodel, _compression_config(ctx.quantization, selected))
        mlmodel.save(str(out))
        return consts

    def export(self, ctx: ExportContext) -> Variant:
        self.check_available()
        import coremltools as ct

        scheme = ctx.quantization.scheme
        if scheme not in self.schemes:
            raise ValueError(f"the coreml target supports quantization {list(self.schemes)}, got {scheme!r}")
        specs = ctx.model.state_specs
        notes = neural_engine_notes(specs)
        if notes:
            message = ("Core ML: state shapes are not Neural-Engine friendly (it prefers dims in multiples of "
                       f"{NEURAL_ENGINE_MULTIPLE}); the model runs, possibly on GPU/CPU instead: " + "; ".join(notes))
            warnings.warn(message, stacklevel=2)
            ctx.progress(message)
        out_dir = ctx.target_dir(self.name)
        package = out_dir / PACKAGE
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            parts, consts = {}, {}
            for entry in FUNCTIONS:
                ctx.progress(f"coreml/{ctx.quantization.tag}: converting {entry}")
                parts[entry] = str(Path(tmp) / f"{entry}.mlpackage")
                consts.update(self._convert(ctx, entry, Path(parts[entry])))
            ctx.progress(f"coreml/{ctx.quantization.tag}: merging step and chunk into {PACKAGE} (shared weights)")
            desc = ct.utils.MultiFunctionDescriptor()
            for entry in FUNCTIONS:
                desc.add_function(parts[entry], src_function_name="main", target_function_name=entry)
            desc.default_function_name = "step"
            if package.exists():
                shutil.rmtree(package)
            ct.utils.save_multifunction(desc, str(package))
        spec = ct.utils.load_spec(str(package))
        stored = {entry: weight_storage(spec, entry) for entry in FUNCTIONS}
        weights = sorted({(name, dtype) for entry in FUNCTIONS for _, name, dtype in stored[entry]})
        # int4 leaves the weights its policy does not select in float16 on purpose, and an untied embedding table
        # (a gather, not a weight matrix: int4 packs matrices on every target); any other plain weight was skipped
        # by coremltools (for int4: input dim not a multiple of group_size)
        expected = {n for n, modules in consts.items() if not ctx.quantization.int4_applies(modules[0])}
        if scheme == "int4":
            expected |= {name for entry in FUNCTIONS for op, name, _ in stored[entry]
                         if op == "gather" and name not in consts}
        uncompressed = [name for name, dtype in weights if scheme in ("int8", "int4") and not dtype.startswith("INT")
                        and name not in expected]
        if uncompressed:
            message = (f"Core ML {scheme}: coremltools left {len(uncompressed)} weight(s) uncompressed (for int4, "
                       f"their input dim is not a multiple of group_size={ctx.quantization.group_size}): "
                       + ", ".join(uncompressed))
            warnings.warn(message, stacklevel=2)
            ctx.progress(message)
        files = {f"package:{p.relative_to(package).as_posix()}": file_record(ctx.root, p)
                 for p in sorted(package.rglob("*")) if p.is_file()}
        info = {
            "package": package.relative_to(ctx.root).as_posix(),
            "functions": list(FUNCTIONS),
            "default_function": "step",
            "minimum_deployment_target": "iOS18/macOS15",
            "compute_precision": "float32" if scheme == "none" else "float16",
            "weight_compression": _compression_summary(scheme, ctx.quantization.group_size),
            **({"int4": _int4_summary(ctx.quantization, consts, dict(weights))}
               if scheme == "int4" else {}),
            "weight_dtypes": {dtype: sum(1 for _, d in weights if d == dtype)
                              for dtype in sorted({d for _, d in weights})},
            "uncompressed_weights": uncompressed,
            "batch_sizes": [BATCH_SIZE],
            "tokens_dtype": "int32",
            "state_io_dtype": "float32",
            "chunk_form": "chunked scan (intermediates of rank <= 5)",
            "feature_names": {n: feature_name(n) for n in
                              ["tokens", "logits"] + [s.name for s in specs] + [f"new_{s.name}" for s in specs]},
            "neural_engine_notes": notes,
            "coremltools_version": ct.__version__,
        }
        return Variant(self.name, ctx.quantization.to_dict(), files, info)


# weight operand of the ops whose weights are compressed
WEIGHT_OPERANDS = {"linear": "weight", "matmul": "y", "gather": "x"}


def weight_storage(spec: Any, function: str) -> list[tuple[str, str, str]]:
    """``(op type, weight name, stored dtype)`` of each linear/matmul/gather weight of a function in ``spec``.

    The stored dtype is the MIL data type on disk: ``FLOAT16``/``FLOAT32`` for plain weights, ``INT8``/``INT4``
    for compressed ones (read through the ``constexpr_*`` op that dequantises them at load).
    """
    from coremltools.proto import MIL_pb2

    fn = spec.mlProgram.functions[function]
    ops = {out.name: op for op in fn.block_specializations[fn.opset].operations for out in op.outputs}
    found = []
    for op in fn.block_specializations[fn.opset].operations:
        if op.type not in WEIGHT_OPERANDS:
            continue
        arg = op.inputs[WEIGHT_OPERANDS[op.type]].arguments[0]
        src = ops.get(arg.name) if arg.name else None
        if src is None or not (src.type == "const" or src.type.startswith("constexpr")):
            continue                                            # an activation, not a weight
        if src.type == "const":
            dtype = src.attributes["val"].type.tensorType.dataType
        else:
            data = src.inputs["data"].arguments[0]
            dtype = (data.value.type.tensorType.dataType if data.HasField("value")
                     else ops[data.name].attributes["val"].type.tensorType.dataType)
        found.append((op.type, src.outputs[0].name, MIL_pb2.DataType.Name(dtype)))
    return found


def _int4_consts(ctx: ExportContext, consts: dict[str, list[str]], entry: str) -> list[str]:
    """The weight consts the int4 policy selects, checked: every selected module has one in this function, and
    no const stands for modules the policy treats differently."""
    selected, _ = int4_split(ctx.quantization, consts, "Core ML const")
    wanted, _ = int4_selection(ctx.model, ctx.quantization)
    found = {m for name in selected for m in consts[name]}
    if not wanted:
        raise ValueError(f"the int4 policy {list(ctx.quantization.int4_modules)} selects no weight matrix of "
                         f"the model")
    if set(wanted) - found:
        raise RuntimeError(f"Core ML {entry}: no weight const found for {sorted(set(wanted) - found)} (selected "
                           f"for int4); the converted program names {sorted(consts)}")
    return selected


def _int4_summary(recipe: QuantizationRecipe, consts: dict[str, list[str]], stored: dict[str, str]) -> dict:
    """Which modules' weights are stored as int4 in the package, and which stay float16 by the policy.

    ``stored`` is ``{weight name: stored dtype}`` of the saved package; coremltools renames a const it compresses
    (``<name>_quantized``), so a selected const no longer stored as a float under its own name was packed (and
    the INT4 count must agree)."""
    floats = {name for name, dtype in stored.items() if not dtype.startswith("INT")}
    packed_consts = [name for name, modules in consts.items() if recipe.int4_applies(modules[0]) and name not in floats]
    n_int4 = sum(dtype == "INT4" for dtype in stored.values())
    if n_int4 != len(packed_consts):
        raise RuntimeError(f"Core ML int4: the package stores {n_int4} INT4 weights, but {len(packed_consts)} "
                           f"selected consts were compressed ({packed_consts})")
    packed = {m for name in packed_consts for m in consts[name]}
    kept = {m for modules in consts.values() for m in modules if not recipe.int4_applies(m)}
    return {"policy": list(recipe.int4_modules), "quantized_modules": sorted(packed),
            "float16_modules": sorted(kept),
            "float16_reason": "not selected by the recipe's int4 policy (see QuantizationRecipe)"}


def _compression_summary(scheme: str, group_size: int) -> str | None:
    if scheme == "int8":
        return "int8 linear symmetric, per output channel (linear, matmul, embedding, short-conv weights)"
    if scheme == "int4":
        return (f"int4 linear symmetric, blocks of {group_size} input columns (the weights of the modules the "
                f"recipe's int4 policy selects; the others float16)")
    return None
