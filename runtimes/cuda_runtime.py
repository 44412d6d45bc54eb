"""CUDA runtime: the artifact's ``torch`` variant on an NVIDIA GPU, through seqedge's Triton kernels.

Prefill runs the model's chunked form on the GPU, whose scans dispatch to the Triton chunk kernels
(``seqedge::chunk_scan_gated`` / ``seqedge::chunk_scan_delta``); steps replay a CUDA graph of
:class:`seqedge.kernels.FusedDecoder` (about five Triton launches per layer; native and imported families' mixers),
one decoder per batch size (a model whose parts its kernels do not compute steps through
:class:`~seqedge.kernels.decode_graph.GraphDecoder`, the model's own step in a graph, and a warning says why). Weights
in float32 (the default: the variant's precision, which ``seqedge validate`` holds to the fp32 budget), bfloat16 or
float16 (``dtype=``); the state is float32 and stays on the GPU as torch tensors inside the
``State`` (``State.numpy()`` copies it to the host when another runtime needs it; a numpy state handed in is moved
to the GPU). Logits come back as float32 numpy arrays, as from every runtime.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import numpy as np

from seqedge.artifact import Manifest, Variant
from seqedge.state import State

from .base import RuntimeUnavailable
from .session import Session, check_logits_mode

logger = logging.getLogger("seqedge.runtimes")
DTYPES = ("bfloat16", "float16", "float32")
MAX_DECODERS = 4     # CUDA-graph decoders kept (one per batch size, least recently used dropped first)


def cuda_available() -> bool:
    """Whether the cuda runtime can run here: torch with CUDA, a visible GPU and triton."""
    try:
        CudaRuntime().check_available()
    except (ImportError, RuntimeUnavailable):
        return False
    return True


class CudaBackend:
    runtime = "cuda"
    target = "torch"

    def __init__(self, model, device, graphs: bool = True) -> None:
        import torch

        self._torch = torch
        self.model = model
        self.device = device
        self.graphs = graphs
        self._decoders: OrderedDict[int, Any] = OrderedDict()
        self._last: dict[int, list] = {}          # per batch size: the state the decoder's buffers hold
        from seqedge.kernels.decode_fused_pack import unsupported_part

        self.fused_refusal = unsupported_part(model.config)     # None: steps run FusedDecoder
        if self.fused_refusal:
            logger.warning("seqedge: the cuda runtime steps with the model's own step in a CUDA graph "
                           "(GraphDecoder), not the fused kernels: %s", self.fused_refusal)

    @property
    def session_class(self) -> type:
        return CudaSession

    def to_device(self, state) -> list:
        """State tensors (numpy or torch) as float32 tensors on this GPU; tensors already there pass through."""
        torch = self._torch
        return [torch.as_tensor(np.asarray(t) if not hasattr(t, "detach") else t, device=self.device,
                                dtype=torch.float32) for t in state]

    def run(self, entry: str, tokens, state) -> tuple[np.ndarray, list]:
        """``step``: tokens ``[B]``; ``chunk``: tokens ``[B, T]`` of any length T. Returns float32 numpy logits and
        the new state as float32 tensors on the GPU."""
        torch = self._torch
        if entry not in ("step", "chunk"):
            raise ValueError(f"unknown entry point {entry!r}; valid ones are ['step', 'chunk']")
        tok = torch.as_tensor(np.ascontiguousarray(tokens, dtype=np.int64)).to(self.device)
        states = self.to_device(state)
        with torch.inference_mode():
            if entry == "step":
                logits, new = self._step(tok, states)
            else:
                logits, new = self.model.forward_tensors(tok, states)
                new = [t.float() for t in new]
            return logits.float().cpu().numpy(), new

    def _decoder(self, batch: int):
        if batch in self._decoders:
            self._decoders.move_to_end(batch)
            return self._decoders[batch]
        while len(self._decoders) >= MAX_DECODERS:
            dropped, _ = self._decoders.popitem(last=False)
            self._last.pop(dropped, None)
        dec = self._decoders[batch] = self.new_decoder(batch)
        return dec

    def new_decoder(self, batch: int):
        """A new CUDA-graph decoder for ``batch`` rows: FusedDecoder, or GraphDecoder (the model's own step in a
        graph) where the fused kernels do not compute the model (``fused_refusal`` says why)."""
        if self.fused_refusal is None:
            from seqedge.kernels import FusedDecoder

            return FusedDecoder(self.model, batch, capture=self.graphs)
        from seqedge.kernels.decode_graph import GraphDecoder

        return GraphDecoder(self.model, batch)

    def _step(self, tok, states: list) -> tuple:
        batch = int(tok.shape[0])
        dec = self._decoder(batch)
        last = self._last.get(batch)
        if last is None or any(a is not b for a, b in zip(states, last)):
            for buf, t in zip(dec.states, states):      # a state the buffers do not hold already
                buf.copy_(t)
        logits = dec.step(tok).clone()
        new = [t.clone() for t in dec.states]          # States are values: the next step must not change them
        self._last[batch] = new
        return logits, new

    def describe(self) -> dict[str, Any]:
        torch = self._torch
        return {"device": torch.cuda.get_device_name(self.device), "dtype": str(self.model.embed.weight.dtype)
                .replace("torch.", ""), "step": self.step_kind(), "prefill": "Triton chunk kernels"}

    def step_kind(self) -> str:
        """Which decoder runs the steps, and why not the fused one where it does not."""
        if self.fused_refusal is None:
            return "FusedDecoder in a CUDA graph"
        return f"GraphDecoder (the model's own step) in a CUDA graph: {self.fused_refusal}"


class CudaSession(Session):
    """A Session whose states live on the GPU; prefill runs the whole prompt in one chunked forward."""

    def init_state(self, batch_size: int = 1) -> State:
        numpy_state = super().init_state(batch_size)
        return numpy_state.with_tensors(self.backend.to_device(numpy_state.tensors))

    def _check_state(self, state: State, batch_size: int, check_finite: bool) -> list:
        if not isinstance(state, State):
            raise TypeError(f"state must be a seqedge State (from init_state), got {type(state).__name__}")
        state.check(self.specs, self.fingerprint, batch_size)
        tensors = self.backend.to_device(state.tensors)
        torch = self.backend._torch
        # on the GPU, one flag for all tensors; the host copy (naming the bad tensor) only when one is not finite
        if check_finite and tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
            state.with_tensors(tensors).check_finite()
        return tensors

    def prefill(self, tokens: Any, state: State, *, check_finite: bool = True,
                logits: str = "all") -> tuple[np.ndarray, State]:
        """Any number of tokens in one forward: tokens ``[B, T]`` -> (logits ``[B, T, V]``, or ``[B, V]`` of the
        last token with ``logits="last"``, new state); ``check_finite`` as in :meth:`step`."""
        tokens = self._check_tokens(tokens, 2)
        last_only = check_logits_mode(logits, tokens.shape[1])
        arrays = self._check_state(state, tokens.shape[0], check_finite)
        if tokens.shape[1] == 0:
            return np.zeros((tokens.shape[0], 0, self.vocab_size), np.float32), state.with_tensors(arrays)
        out, new = self.backend.run("chunk", tokens, arrays)
        return (np.array(out[:, -1]) if last_only else out), state.with_tensors(new)   # a copy, as Session's


class CudaRuntime:
    runtime = "cuda"
    target = "torch"

    def check_available(self) -> None:
        try:
            import safetensors  # noqa: F401
            import torch
        except ImportError as err:
            raise ImportError(f"the cuda runtime needs torch with CUDA and safetensors ({err}); run: "
                              "pip install torch safetensors triton") from None
        if not torch.cuda.is_available():
            raise RuntimeUnavailable(
                "the cuda runtime needs an NVIDIA GPU with a CUDA build of torch; torch.cuda.is_available() is False "
                f"here (torch {torch.__version__}). Run it on a machine with an NVIDIA GPU, or use runtime='torch' "
                "(CPU) or 'onnxruntime' here")
        try:
            import triton  # noqa: F401
        except ImportError:
            raise ImportError("the cuda runtime runs Triton kernels; run: pip install triton") from None

    def open(self, manifest: Manifest, variant: Variant, *, dtype: str = "float32", device: str = "cuda",
             graphs: bool = True, **options: Any) -> CudaBackend:
        if options:
            raise ValueError(f"unknown option(s) {sorted(options)} for the cuda runtime; valid: dtype, device, graphs")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
        if variant.target != "torch":
            raise RuntimeUnavailable(f"the cuda runtime runs torch variants, not {variant.name}")
        import torch

        from .torch_runtime import load_checked_model

        model = load_checked_model(manifest, variant)
        dev = torch.device(device)
        return CudaBackend(model.to(device=dev, dtype=getattr(torch, dtype)), dev, graphs)
