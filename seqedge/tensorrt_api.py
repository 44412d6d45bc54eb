"""One adapter over the two TensorRT Python APIs: full TensorRT (``import tensorrt``) and TensorRT for RTX
(``import tensorrt_rtx_bindings``, wheels ``tensorrt-rtx-cu13-libs`` + ``tensorrt-rtx-cu13-bindings``).

Full TensorRT is used when importable, else TensorRT for RTX; which one is recorded with every engine, because an
engine only deserialises with the library that built it. Both build strongly typed networks: the precision of an
engine is the precision of its ONNX graph (fp32 or fp16), never a builder flag.

TensorRT for RTX builds ahead of time without a GPU; its engines run on compute capability 8.0, 8.6, 8.9 and 12.x
(Ampere, Ada, Blackwell), not on Hopper (9.0). Full TensorRT builds on, and for, the GPU it runs on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

INSTALL_HINT = ("pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings  (TensorRT for RTX: builds on any "
                "machine; engines run on RTX-class GPUs), or full TensorRT from NVIDIA (pip install tensorrt-cu13)")
FULL, RTX = "tensorrt", "tensorrt_rtx"
MODULES = {FULL: "tensorrt", RTX: "tensorrt_rtx_bindings"}
# compute capabilities TensorRT-RTX engines run on by default (its portable ahead-of-time build)
RTX_COMPUTE_CAPABILITIES = ((8, 0), (8, 6), (8, 9), (12, 0), (12, 1))


@dataclass(frozen=True)
class TensorRTAPI:
    """An imported TensorRT Python module and which flavour it is (``tensorrt`` or ``tensorrt_rtx``)."""

    trt: Any
    flavor: str

    @property
    def version(self) -> str:
        return str(self.trt.__version__)

    def describe(self) -> dict[str, str]:
        return {"api": self.flavor, "module": MODULES[self.flavor], "version": self.version}


def _import(flavor: str) -> TensorRTAPI:
    import importlib

    module = importlib.import_module(MODULES[flavor])
    if not hasattr(module, "Builder"):      # the PyPI `tensorrt` placeholder package has no API
        raise ImportError(f"{MODULES[flavor]} is installed but has no TensorRT API")
    return TensorRTAPI(module, flavor)


def load_api(flavor: str | None = None) -> TensorRTAPI:
    """Full TensorRT when importable, else TensorRT for RTX; ``flavor`` demands one (e.g. the one that built an
    engine). Raises ImportError with the exact install command when none is available."""
    if flavor is not None and flavor not in MODULES:
        raise ValueError(f"unknown TensorRT API {flavor!r}; valid ones are {sorted(MODULES)}")
    errors = []
    for candidate in ([flavor] if flavor else [FULL, RTX]):
        try:
            return _import(candidate)
        except ImportError as err:
            errors.append(f"{MODULES[candidate]}: {err}")
    need = "TensorRT for RTX" if flavor == RTX else ("full TensorRT" if flavor == FULL else "TensorRT")
    raise ImportError(f"{need} is not importable ({'; '.join(errors)}); install it: {INSTALL_HINT}")


class _CapturingLogger:
    """A TensorRT logger that keeps warnings and errors, so a failed build can say why."""

    def __new__(cls, trt: Any) -> Any:
        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.messages: list[str] = []

            def log(self, severity: Any, msg: str) -> None:
                if severity <= trt.ILogger.Severity.WARNING:
                    self.messages.append(f"{severity.name}: {msg}")

        return Logger()


@dataclass(frozen=True)
class EngineBuild:
    """A serialized engine and how it was built."""

    data: bytes
    profile: dict[str, dict[str, list[int]]]      # input name -> {"min", "opt", "max"} shapes
    compute_capabilities: list[str]               # targets of a TensorRT-RTX build; ["build GPU"] for full TensorRT
    warnings: list[str]


def batch_profile(network: Any, min_batch: int, opt_batch: int, max_batch: int) -> dict[str, dict[str, list[int]]]:
    """min/opt/max shapes of every input: the batch dim (dim 0, dynamic) varies, every other dim is fixed."""
    shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = list(tensor.shape)
        if not dims or any(d < 0 for d in dims[1:]):
            raise ValueError(f"ONNX input {tensor.name!r} has shape {dims}: TensorRT profiles here vary the batch "
                             "(dim 0) only; every other dim must be static")
        shapes[tensor.name] = {k: [b] + dims[1:] for k, b in
                               (("min", min_batch), ("opt", opt_batch), ("max", max_batch))}
    return shapes


def build_engine(api: TensorRTAPI, onnx_path: Path, *, min_batch: int = 1, opt_batch: int = 1, max_batch: int = 8,
                 progress: Callable[[str], None] = lambda m: None) -> EngineBuild:
    """Parse ``onnx_path`` (external data beside it is found) and build a serialized engine with one batch profile.

    Raises RuntimeError with the parser's or builder's own messages when either fails.
    """
    trt = api.trt
    logger = _CapturingLogger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"{api.flavor} could not parse {onnx_path.name}: {'; '.join(errors)} (TensorRT needs the "
                           "portable, standard-op ONNX flavour)")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    shapes = batch_profile(network, min_batch, opt_batch, max_batch)
    for name, s in shapes.items():
        profile.set_shape(name, tuple(s["min"]), tuple(s["opt"]), tuple(s["max"]))
    config.add_optimization_profile(profile)
    progress(f"{api.flavor} {api.version}: building {onnx_path.stem} engine (batch {min_batch}..{max_batch}, "
             f"opt {opt_batch})")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{api.flavor} failed to build an engine from {onnx_path.name}: "
                           + ("; ".join(logger.messages) or "no message from the builder"))
    if api.flavor == RTX:
        n = config.num_compute_capabilities
        targets = ([str(config.get_compute_capability(i)).split(".")[-1] for i in range(n)] if n
                   else [f"sm{a}{b}" for a, b in RTX_COMPUTE_CAPABILITIES])
    else:
        targets = ["the GPU it was built on"]
    return EngineBuild(bytes(serialized), shapes, targets, list(logger.messages))
