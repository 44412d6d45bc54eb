"""ExecuTorch runtime: runs the ``step`` and ``chunk`` methods of an artifact's ``.pte`` in the ExecuTorch Python
runtime (``executorch.runtime.Runtime``), whose prebuilt pybindings include the XNNPACK backend.

The pybindings exchange ``torch.Tensor``s, so this runtime imports torch (CPU) besides ExecuTorch; data still
crosses the Session boundary as numpy arrays. XNNPACK's thread pool is one per process; its size is chosen
from the model's size or asked for with ``threads`` (:mod:`.executorch_pool` says when it can change). A step's
large outputs (a real-size model's logits and state) leave the program's memory through numpy on the calling
thread, not through torch's thread pool, whose spinning threads would slow the next step
(:meth:`ExecuTorchBackend._numpy_copies`).
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from seqedge.artifact import Manifest, Variant

from . import executorch_pool
from .base import RuntimeUnavailable
from .block_pool import BlockPool
from .signature import TensorSig, check_signature
from .state_layout import StateLayout
from .threads import check_threads, default_threads

INSTALL_HINT = "pip install executorch==1.5.1 torchao==0.18.0"
BACKEND = "XnnpackBackend"
METHODS = ("step", "chunk")
# ExecuTorch ScalarType codes (c10 numbering) of the dtypes a program's inputs/outputs may have
SCALAR_TYPES = {3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64"}
# torch copies a tensor of this many elements or more on its intra-op thread pool (at::internal::GRAIN_SIZE)
TORCH_PARALLEL_GRAIN = 32768


def _import_runtime():
    try:
        import torch
        from executorch.runtime import Runtime
    except ImportError as err:
        raise ImportError(f"the executorch runtime needs ExecuTorch ({err}); install it with `{INSTALL_HINT}`") \
            from None
    try:    # the quantized kernels: a packed embedding table's lookup (export/executorch_embedding.py)
        import executorch.kernels.quantized  # noqa: F401
    except (ImportError, OSError):
        pass        # a program that needs them names the missing operator when its method loads
    return torch, Runtime


class ExecuTorchBackend:
    """One loaded ``.pte``: its two methods, and the batch range the program was planned for."""

    runtime = "executorch"
    target = "executorch"

    def __init__(self, manifest: Manifest, variant: Variant, threads: int) -> None:
        torch, Runtime = _import_runtime()
        self._torch = torch
        self.path = manifest.path(variant, "program")
        runtime = Runtime.get()
        if not runtime.backend_registry.is_available(BACKEND):
            raise RuntimeUnavailable(f"this ExecuTorch build has no {BACKEND} (registered: "
                                     f"{runtime.backend_registry.registered_backend_names}); install the "
                                     f"prebuilt wheel with `{INSTALL_HINT}`")
        self.program = runtime.load_program(self.path)
        missing = [m for m in METHODS if m not in self.program.method_names]
        if missing:
            raise RuntimeUnavailable(f"{self.path} lacks method(s) {missing} (it has "
                                     f"{sorted(self.program.method_names)}); re-run `seqedge export --target "
                                     "executorch`")
        for m in METHODS:
            meta = self.program.metadata(m)
            check_signature(manifest, m, self.path, _sigs(meta.input_tensor_meta, meta.num_inputs()),
                            _sigs(meta.output_tensor_meta, meta.num_outputs()))
        self.methods = {m: self.program.load_method(m) for m in METHODS}
        # the pybind callables behind ``Method.execute``, called without its Python frame
        self._calls = {m: method._method for m, method in self.methods.items()}
        self._ids: dict[tuple[int, ...], tuple[Any, np.ndarray]] = {}
        self._last_out: list[Any] = []     # the new state the last call returned (its own torch tensors)
        # a step's largest output per batch row, in elements (which steps copy through numpy)
        self._step_row = max([manifest.config.vocab_size] +
                             [int(np.prod(s.concrete_shape(1))) for s in manifest.state_specs])
        self.numpy_copies_from = TORCH_PARALLEL_GRAIN       # elements; see _numpy_copies
        # the new states those steps copy out go to blocks the dropped states gave back (block_pool says why),
        # laid out as the C++ library's backend lays its states out
        self._blocks = BlockPool()
        self._layout = StateLayout([tuple(s.concrete_shape(1)[1:]) for s in manifest.state_specs])
        self.threads = threads
        batch = variant.info.get("batch", {})
        self.min_batch, self.max_batch = int(batch.get("min", 1)), int(batch.get("max", 1))

    def run(self, entry: str, tokens: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        method = self._calls.get(entry)
        if method is None:
            raise ValueError(f"unknown entry point {entry!r}; valid ones are {list(METHODS)}")
        ids = self._ids_tensor(tokens)
        # ``execute`` returns copies of the outputs (the program's planned memory is overwritten by the next
        # call). The new state stays in torch tensors: the usual step loop hands exactly the last call's back,
        # and those go in as they are, unchecked (they are this backend's own float32 contiguous outputs)
        if self._is_last_out(state):
            inputs = [ids, *state]
        else:
            inputs = [ids] + [self._state_tensor(s) for s in state]
        if entry != "step" or not self._numpy_copies(tokens):
            logits, *new_state = method(inputs)
            logits = logits.numpy()
        else:
            # copied out of the program's memory by numpy, on this thread (see _numpy_copies)
            logits, *planned = method(inputs, False)
            logits = logits.numpy().copy()
            new_state = self._pooled_copies(planned, tokens.shape[0])
        self._last_out = new_state
        return logits, new_state

    def step_donated(self, tokens: np.ndarray, state: list[Any]) -> tuple[np.ndarray, list[Any]]:
        """``run("step", ...)`` for a state its caller gave up. Where that is the state this backend returned
        last (its own tensors, which no one else writes), the new state is copied from the program's memory over
        them, and they are the state returned: no new tensors per step. Any other state runs the plain step,
        whose outputs then carry the chain."""
        if not self._is_last_out(state):
            return self.run("step", tokens, state)
        ids = self._ids_tensor(tokens)
        # outputs left in the program's memory (not cloned): read before the next call reuses it
        logits, *new_state = self._calls["step"]([ids, *state], False)
        if not self._numpy_copies(tokens):
            self._torch._foreach_copy_(state, new_state)      # one dispatch for all of them, not one per tensor
        else:
            for dst, src in zip(state, new_state):
                np.copyto(dst.numpy(), src.numpy())
        return logits.numpy().copy(), state

    def _pooled_copies(self, planned: list[Any], batch: int) -> list[Any]:
        """Copies of the state tensors ``planned`` (the program's memory), as torch tensors over one block of the
        pool: a plain step loop then writes its states into two blocks in turn, not into fresh memory each step
        (whose page faults cost a real-size model's step more than the copy)."""
        block, _ = self._blocks.take(batch * self._layout.total)
        views = self._layout.views(block, batch)
        for view, src in zip(views, planned):
            np.copyto(view, src.numpy())
        return [self._torch.from_numpy(view) for view in views]

    def _numpy_copies(self, tokens: np.ndarray) -> bool:
        """Whether a step of ``tokens`` ``[B]`` returns a tensor that torch would copy on its intra-op thread
        pool. Such a step's outputs are copied by numpy on the calling thread instead: torch's pool threads keep
        spinning after a parallel copy and take the cores XNNPACK's own pool runs the next step on (a real-size
        model's step took up to 1.4x as long: benchmarks/results/et_numpy_copies_ab.json). Smaller outputs keep
        torch's copies, one dispatch cheaper than numpy's per array; so does a chunk call, long enough for the
        spinning not to matter, whose large logits copy faster on torch's pool."""
        return tokens.shape[0] * self._step_row >= self.numpy_copies_from

    def _is_last_out(self, state: list[Any]) -> bool:
        last = self._last_out
        return len(state) == len(last) and all(map(operator.is_, state, last))

    def _ids_tensor(self, tokens: np.ndarray) -> Any:
        """The token ids in a tensor kept per shape (made once the batch is known to fit the program): the
        program reads its inputs where they lie (they are outside its memory plan)."""
        ids = self._ids.get(tokens.shape)
        if ids is None:
            ids = self._ids[tokens.shape] = self._id_buffer(tokens.shape)
        ids[1][...] = tokens
        return ids[0]

    def _id_buffer(self, shape: tuple[int, ...]) -> tuple[Any, np.ndarray]:
        """An int64 tensor of ``shape`` and its numpy view, for a batch size in the program's planned range."""
        batch = shape[0] if shape else 0
        if not self.min_batch <= batch <= self.max_batch:
            raise ValueError(f"batch size {batch} is outside the range [{self.min_batch}, {self.max_batch}] this "
                             f"ExecuTorch program was planned for ({self.path}); split the batch or re-export")
        ids = self._torch.zeros(shape, dtype=self._torch.int64)
        return ids, ids.numpy()

    def _state_tensor(self, value: Any) -> Any:
        """A state tensor as a contiguous float32 CPU tensor: torch tensors as they are where they already are,
        numpy arrays without a copy where they can (a read-only array, another runtime's state, is copied:
        ``torch.from_numpy`` warns on those)."""
        if isinstance(value, self._torch.Tensor):
            f32 = self._torch.float32
            return value if value.dtype is f32 and value.is_contiguous() else value.to(f32).contiguous()
        if value.dtype == np.float32 and value.flags.c_contiguous and value.flags.writeable:
            return self._torch.from_numpy(value)
        return self._torch.from_numpy(np.array(value, dtype=np.float32, order="C"))

    def describe(self) -> dict[str, Any]:
        from importlib.metadata import version

        return {"library": f"executorch {version('executorch')}", "backend": BACKEND, "device": "cpu",
                "threads": self.threads,
                "program": str(self.path), "batch_range": [self.min_batch, self.max_batch]}


def _sigs(tensor_meta, count: int) -> list[TensorSig]:
    """A method's tensor metadata as TensorSigs (ExecuTorch keeps no names; sizes are the planned upper bounds,
    so the batch axis is left unchecked by the manifest's symbolic batch)."""
    out = []
    for i in range(count):
        info = tensor_meta(i)
        code = int(info.dtype())
        dtype = SCALAR_TYPES.get(code, f"scalar type {code}")
        out.append(TensorSig(None, tuple(int(d) for d in info.sizes()), dtype))
    return out


class ExecuTorchRuntime:
    """Factory registered as ``executorch`` in :data:`seqedge.runtimes.base.RUNTIMES`."""

    runtime = "executorch"
    target = "executorch"

    def check_available(self) -> None:
        _import_runtime()

    def open(self, manifest: Manifest, variant: Variant, *, threads: int | None = None, library: str | None = None,
             **options: Any) -> ExecuTorchBackend:
        if options:
            raise ValueError(f"unknown option(s) {sorted(options)} for executorch; valid: threads (XNNPACK's "
                             "thread pool, one per process: default 1 for small models, else one per core), "
                             "library (seqedge's C++ runner library, libseqedge.so, to run the program instead of "
                             "the Python bindings)")
        threads = check_threads(threads)
        if library is not None:
            from .executorch_native import NativeExecuTorchBackend

            return NativeExecuTorchBackend(manifest, variant, library, threads)
        _import_runtime()
        wanted = default_threads(manifest.config) if threads is None else threads
        return executorch_pool.open_on_pool(lambda n: ExecuTorchBackend(manifest, variant, n), wanted,
                                            explicit=threads is not None)
