"""Whole-model decode captured in one CUDA graph: static token and state buffers, one replay per token.

The graph holds ``model.forward_tensors(tokens[:, None], states, step=True)`` (the same flat step that export
traces) followed by copies of the new states into the static state buffers, so each replay advances the state
in place at fixed addresses and costs one launch instead of hundreds.

    >>> dec = GraphDecoder(model, batch_size=1)            # model on CUDA, in eval mode
    >>> dec.reset()                                         # zero state (or dec.reset(state))
    >>> logits = dec.step(torch.tensor([72], device="cuda"))   # [B, V]; a view of a static buffer

Its graph still replays every small kernel of the model's step (~60 per layer), each costing a fixed launch
overhead whatever its size. :class:`seqedge.kernels.decode_fused.FusedDecoder` has the same interface and runs the
same math as 5 Triton launches per layer; this decoder stays as its reference and for models that one does not take.
"""

from __future__ import annotations

import torch

from seqedge.state import State


class StaticDecoder:
    """What both CUDA-graph decoders share: token and state buffers at fixed addresses, one step (``_body``,
    defined by the subclass: tokens -> logits ``[B, V]`` in static buffers) captured in a graph, and
    ``reset`` / ``step`` / ``state``. Subclasses call :meth:`_static_buffers`, then :meth:`_capture`."""

    graph: torch.cuda.CUDAGraph | None = None

    def _static_buffers(self, model, batch_size: int, device: torch.device) -> None:
        """The model, batch size, token buffer ``[B]`` and state buffers every step reads and updates in place."""
        self.model, self.batch_size = model, batch_size
        self.tokens = torch.zeros(batch_size, dtype=torch.int64, device=device)            # [B]
        # static buffers: init_state's fresh zeros, taken over (a copy would hold twice the state for a moment)
        self.states = list(model.init_state(batch_size, device).tensors)

    def _body(self) -> torch.Tensor:
        raise NotImplementedError

    def _capture(self, warmup: int) -> None:
        """Run the step ``warmup`` times on a side stream (compiles, allocates, picks kernels), then capture it."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(warmup):
                self._body()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.logits = self._body()                       # [B, V] static output
        self.reset()

    def reset(self, state: State | None = None) -> None:
        """Load ``state`` (or zeros) into the static state buffers."""
        if state is None:
            for buf in self.states:
                buf.zero_()
            return
        state.check(self.model.state_specs, self.model.fingerprint, self.batch_size)
        for buf, t in zip(self.states, state.tensors):
            buf.copy_(torch.as_tensor(t))

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens ``[B]`` -> logits ``[B, V]`` float32 (a static buffer: clone it to keep it past the next step)."""
        if tuple(tokens.shape) != (self.batch_size,):
            raise ValueError(f"tokens must have shape ({self.batch_size},), got {tuple(tokens.shape)}")
        self.tokens.copy_(tokens)
        if self.graph is None:                               # not captured (FusedDecoder in Triton's interpreter)
            return self._body()
        self.graph.replay()
        return self.logits

    def state(self) -> State:
        """A copy of the current state as a :class:`seqedge.state.State`."""
        return State([t.clone() for t in self.states], self.model.state_specs, self.model.fingerprint)


class GraphDecoder(StaticDecoder):
    """CUDA-graph decoder for a :class:`seqedge.model.SequentialAttentionModel` at a fixed batch size."""

    def __init__(self, model, batch_size: int, warmup: int = 2, compile: bool = False) -> None:
        """``compile=True`` runs the step through ``torch.compile`` (Inductor fuses the elementwise work between
        the matmuls into a few kernels) before capturing it: fewer, larger kernels per token, slower to build."""
        device = model.embed.weight.device
        if device.type != "cuda":
            raise ValueError(f"GraphDecoder needs the model on a CUDA device, it is on {device}; "
                             f"call model.cuda() first, or use model.step on CPU")
        self._static_buffers(model, batch_size, device)
        self._forward = model.forward_tensors
        if compile:
            self._forward = torch.compile(model.forward_tensors, fullgraph=True, dynamic=False)
        self._capture(warmup + (2 if compile else 0))        # compiling takes its own first calls

    def _body(self) -> torch.Tensor:
        logits, new_states = self._forward(self.tokens[:, None], self.states, step=True)
        for buf, new in zip(self.states, new_states):
            buf.copy_(new)
        return logits[:, 0]
