"""The Sequential Attention language model: embeddings, pre-norm blocks, final norm, (tied) head."""

from __future__ import annotations

import copy
import math
import os
from typing import Iterator, Sequence

import torch
import torch.nn as nn

from .checkpoint import check_tensors, read_checkpoint, read_tokenizer, save_pretrained
from .config import SequentialAttentionConfig
from .layers import RMSNorm, SequentialAttention, SwiGLU
from .ops import REFERENCE_OPS, MixerOps
from .sampling import Sampler, SamplingConfig
from .state import State, model_fingerprint, state_specs


class Block(nn.Module):
    """x + SeqAttn(norm(x)), then x + SwiGLU(norm(x)) (without the MLP when ``config.mixer.mlp`` is False)."""

    def __init__(self, config: SequentialAttentionConfig, ops: MixerOps = REFERENCE_OPS) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.norm_eps, ops)
        self.attn = SequentialAttention(config, ops)
        if config.mixer.mlp:
            self.mlp_norm = RMSNorm(config.hidden_size, config.norm_eps, ops)
            self.mlp = SwiGLU(config, ops)

    def forward(self, x, conv_state, scan_state, *, step: bool = False):
        mixer = self.attn.step if step else self.attn
        y, conv_state, scan_state = mixer(self.attn_norm(x), conv_state, scan_state)
        x = x + y
        if hasattr(self, "mlp"):
            x = x + self.mlp(self.mlp_norm(x))
        return x, conv_state, scan_state


class SequentialAttentionModel(nn.Module):
    """A language model whose memory is a fixed-size recurrent state.

    >>> model = SequentialAttentionModel(SequentialAttentionConfig.preset("tiny"))
    >>> logits, state = model(torch.tensor([[72, 105]]))          # [1, 2, V]
    >>> logits, state = model.step(torch.tensor([33]), state)     # [1, V]

    ``ops`` are the primitives every module computes with (:class:`seqedge.ops.MixerOps`; the plain PyTorch
    forms by default); export flavours build a copy with theirs through :meth:`with_ops`.
    """

    def __init__(self, config: SequentialAttentionConfig, ops: MixerOps = REFERENCE_OPS) -> None:
        super().__init__()
        self.config = config
        self.ops = ops
        self.tokenizer = None       # an imported model's HFTokenizer; None: the byte tokenizer
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(Block(config, ops) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps, ops)
        self.head = None if config.tie_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.state_specs = state_specs(config)
        self.fingerprint = model_fingerprint(config)
        self._init_weights()

    def _init_weights(self) -> None:
        std = self.config.init_std
        out_std = std / math.sqrt(2 * self.config.num_layers)
        nn.init.normal_(self.embed.weight, std=std)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_out = name.endswith("out_proj") or name.endswith("mlp.down")
                nn.init.normal_(module.weight, std=out_std if is_out else std)
        if self.head is not None:
            nn.init.normal_(self.head.weight, std=std)

    # state ------------------------------------------------------------------------------------------------
    def init_state(self, batch_size: int = 1, device: torch.device | str | None = None) -> State:
        """Zero state for ``batch_size`` sequences (float32, on the model's device by default)."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        device = self.embed.weight.device if device is None else device
        tensors = [torch.zeros(s.concrete_shape(batch_size), dtype=torch.float32, device=device)
                   for s in self.state_specs]
        return State(tensors, self.state_specs, self.fingerprint)

    def _as_torch_state(self, state: State | None, batch_size: int, device: torch.device) -> list[torch.Tensor]:
        if state is None:
            return self.init_state(batch_size, device).tensors
        state.check(self.state_specs, self.fingerprint, batch_size)
        return [torch.as_tensor(t, device=device, dtype=torch.float32) for t in state.tensors]

    # forward ----------------------------------------------------------------------------------------------
    def _check_tokens(self, tokens: torch.Tensor, ndim: int) -> None:
        if tokens.dim() != ndim or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be an integer tensor of rank {ndim}, got {tokens.dtype} "
                             f"of shape {tuple(tokens.shape)}")
        if tokens.numel() and not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= self.config.vocab_size:
                raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got range [{lo}, {hi}]")

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.embed.weight if self.head is None else self.head.weight
        return self.ops.logits(self.norm(x), weight)

    def with_ops(self, ops: MixerOps) -> "SequentialAttentionModel":
        """This model built with ``ops`` (an export flavour): a copy whose parameters and buffers are this
        model's own tensors (shared, not copied), so weights and quantization carry over."""
        shared = {id(t): t for t in (*self.parameters(), *self.buffers())}
        model = copy.deepcopy(self, memo=shared)
        for module in model.modules():
            if isinstance(getattr(module, "ops", None), MixerOps):
                module.ops = ops
        return model

    def forward_tensors(self, tokens: torch.Tensor, states: Sequence[torch.Tensor], *, step: bool = False):
        """Flat form for export: tokens ``[B, T]``, ordered state tensors -> (logits ``[B, T, V]``, new states)."""
        x = self.embed(tokens)
        conv = self.config.mixer.short_conv          # per layer: (conv tail, scan matrix), or the scan matrix only
        per_layer = 2 if conv else 1
        new_states: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            conv_state = states[per_layer * i] if conv else None
            x, conv_state, scan_state = block(x, conv_state, states[per_layer * i + per_layer - 1], step=step)
            new_states += [conv_state, scan_state] if conv else [scan_state]
        return self._logits(x), new_states

    def forward(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Chunked form over any length: tokens ``[B, T]`` -> (logits ``[B, T, V]`` float32, new state)."""
        self._check_tokens(tokens, 2)
        states = self._as_torch_state(state, tokens.shape[0], tokens.device)
        logits, new_states = self.forward_tensors(tokens, states)
        return logits, State(new_states, self.state_specs, self.fingerprint)

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Recurrent form, one token per sequence: tokens ``[B]`` -> (logits ``[B, V]`` float32, new state)."""
        self._check_tokens(tokens, 1)
        states = self._as_torch_state(state, tokens.shape[0], tokens.device)
        logits, new_states = self.forward_tensors(tokens[:, None], states, step=True)
        return logits[:, 0], State(new_states, self.state_specs, self.fingerprint)

    @torch.no_grad()
    def generate(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_tokens: Sequence[int] = (),
    ) -> Iterator[int]:
        """Yield up to ``max_new_tokens`` sampled tokens after ``prompt`` (greedy when temperature is 0)."""
        if len(prompt) == 0:
            raise ValueError("prompt must contain at least one token")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        sampler = Sampler(SamplingConfig(temperature, top_k, top_p, seed))
        device = self.embed.weight.device
        logits, state = self(torch.tensor([list(prompt)], device=device))
        last = logits[:, -1]
        for _ in range(max_new_tokens):
            token = int(sampler(last.cpu().numpy())[0])
            yield token
            if token in stop_tokens:
                return
            last, state = self.step(torch.tensor([token], device=device), state)

    # checkpoints ------------------------------------------------------------------------------------------
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` (and an imported model's ``tokenizer.json``)
        atomically to ``directory``."""
        save_pretrained(self, directory, self.tokenizer)

    @classmethod
    def load_pretrained(cls, directory: str | os.PathLike, map_location: str = "cpu") -> "SequentialAttentionModel":
        """Read a checkpoint written by :meth:`save_pretrained`; never unpickles anything."""
        return load_pretrained(directory, map_location=map_location)


def load_pretrained(directory: str | os.PathLike, map_location: str = "cpu") -> SequentialAttentionModel:
    """Build the model from ``directory``; every tensor must be present with the shape the config implies."""
    config, tensors = read_checkpoint(directory, map_location)
    model = SequentialAttentionModel(config)
    check_tensors(directory, tensors, model.state_dict())
    model.load_state_dict(tensors)
    model.tokenizer = read_tokenizer(directory, config.vocab_size)
    return model.to(map_location)
