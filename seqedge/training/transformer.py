"""The matched baseline: a causal softmax-attention transformer with the Sequential Attention model's width,
depth, heads and SwiGLU MLP, so quality can be compared side by side.

Only the mixer differs: softmax attention with rotary positions over a KV cache instead of the recurrent scan.
It keeps the same output gate ``W_o(o * SiLU(W_r x))`` so the two models differ in the mixer alone and their
parameter counts stay within 5% (tested). Decoding has an explicit, export-friendly cache:

    >>> model = TransformerModel(TransformerConfig.matching(SequentialAttentionConfig.preset("tiny")))
    >>> k, v = model.init_cache(batch_size=1)                      # [L, B, H, S, hd] each
    >>> logits, k, v = model.step(torch.tensor([72]), k, v, torch.tensor(0))
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import SequentialAttentionConfig
from ..layers import RMSNorm, SwiGLU

FORMAT = "seqedge-transformer-baseline"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TransformerConfig:
    """Shape of the baseline; ``mlp`` carries the SwiGLU sizes of the matched Sequential Attention config."""

    mlp: SequentialAttentionConfig
    max_seq_len: int = 4096
    rope_base: float = 10_000.0

    def __post_init__(self) -> None:
        if self.max_seq_len <= 0:
            raise ValueError(f"max_seq_len must be > 0, got {self.max_seq_len}")
        if (self.mlp.hidden_size // self.mlp.num_heads) % 2:
            raise ValueError(f"head dim hidden_size / num_heads must be even for rotary positions, got "
                             f"{self.mlp.hidden_size} / {self.mlp.num_heads}")

    @classmethod
    def matching(cls, config: SequentialAttentionConfig, max_seq_len: int = 4096) -> "TransformerConfig":
        return cls(config, max_seq_len)

    @property
    def head_dim(self) -> int:
        return self.mlp.hidden_size // self.mlp.num_heads

    def to_dict(self) -> dict:
        return {"mlp": self.mlp.to_dict(), "max_seq_len": self.max_seq_len, "rope_base": self.rope_base}

    @classmethod
    def from_dict(cls, data: dict) -> "TransformerConfig":
        return cls(SequentialAttentionConfig.from_dict(data["mlp"]), data["max_seq_len"], data["rope_base"])


def _rotate(x: torch.Tensor, pos: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x ``[B, H, T, hd]`` at integer positions ``pos`` ``[T]``."""
    angles = pos.to(torch.float32)[:, None] * inv_freq[None, :]                 # [T, hd/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        c = config.mlp
        self.num_heads, self.head_dim = c.num_heads, config.head_dim
        self.qkv = nn.Linear(c.hidden_size, 3 * c.hidden_size, bias=False)
        self.out_gate = nn.Linear(c.hidden_size, c.hidden_size, bias=False)
        self.out_proj = nn.Linear(c.hidden_size, c.hidden_size, bias=False)
        inv_freq = 1.0 / config.rope_base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _qkv(self, x: torch.Tensor, pos: torch.Tensor):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [B, H, T, hd]
        return _rotate(q, pos, self.inv_freq), _rotate(k, pos, self.inv_freq), v

    def _out(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        o = o.transpose(1, 2).reshape(x.shape)                                   # [B, T, D]
        return self.out_proj(o * F.silu(self.out_gate(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, T, D]`` -> ``[B, T, D]``, causal."""
        q, k, v = self._qkv(x, torch.arange(x.shape[1], device=x.device))
        return self._out(x, F.scaled_dot_product_attention(q, k, v, is_causal=True))

    def step(self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor):
        """x ``[B, 1, D]``, caches ``[B, H, S, hd]``, pos scalar int64 -> (y, new k_cache, new v_cache).

        The cache is written with a mask (no in-place update, no data-dependent shapes), so it exports.
        """
        q, k, v = self._qkv(x, pos.reshape(1))
        slots = torch.arange(k_cache.shape[2], device=x.device)
        write = (slots == pos)[None, None, :, None]
        k_cache = torch.where(write, k.to(k_cache.dtype), k_cache)
        v_cache = torch.where(write, v.to(v_cache.dtype), v_cache)
        scores = (q @ k_cache.transpose(-1, -2).to(q.dtype)) / math.sqrt(self.head_dim)  # [B, H, 1, S]
        scores = scores.masked_fill((slots > pos)[None, None, None, :], float("-inf"))
        o = torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v_cache.to(q.dtype)
        return self._out(x, o), k_cache, v_cache


class TransformerBlock(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        c = config.mlp
        self.attn_norm = RMSNorm(c.hidden_size, c.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.mlp_norm = RMSNorm(c.hidden_size, c.norm_eps)
        self.mlp = SwiGLU(c)


class TransformerModel(nn.Module):
    """Causal softmax-attention LM; ``forward(tokens [B, T]) -> logits [B, T, V]`` float32."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        c = config.mlp
        self.embed = nn.Embedding(c.vocab_size, c.hidden_size)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(c.num_layers))
        self.norm = RMSNorm(c.hidden_size, c.norm_eps)
        self.head = None if c.tie_embeddings else nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        out_std = c.init_std / math.sqrt(2 * c.num_layers)
        nn.init.normal_(self.embed.weight, std=c.init_std)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_out = name.endswith("out_proj") or name.endswith("mlp.down")
                nn.init.normal_(module.weight, std=out_std if is_out else c.init_std)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.embed.weight if self.head is None else self.head.weight
        return (self.norm(x) @ weight.to(x.dtype).t()).float()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] > self.config.max_seq_len:
            raise ValueError(f"sequence of {tokens.shape[1]} tokens exceeds max_seq_len {self.config.max_seq_len}")
        x = self.embed(tokens)
        for block in self.blocks:
            x = x + block.attn(block.attn_norm(x))
            x = x + block.mlp(block.mlp_norm(x))
        return self._logits(x)

    def init_cache(self, batch_size: int = 1, max_len: int | None = None, device=None):
        """Zero K and V caches ``[L, B, H, S, hd]`` float32 (S = max_len or max_seq_len)."""
        c = self.config
        shape = (c.mlp.num_layers, batch_size, c.mlp.num_heads, max_len or c.max_seq_len, c.head_dim)
        device = self.embed.weight.device if device is None else device
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def step(self, tokens: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor):
        """tokens ``[B]`` at position ``pos`` (scalar int64 tensor) -> (logits ``[B, V]``, k_cache, v_cache)."""
        x = self.embed(tokens)[:, None]                                           # [B, 1, D]
        new_k, new_v = [], []
        for i, block in enumerate(self.blocks):
            y, k, v = block.attn.step(block.attn_norm(x), k_cache[i], v_cache[i], pos)
            x = x + y
            x = x + block.mlp(block.mlp_norm(x))
            new_k.append(k)
            new_v.append(v)
        return self._logits(x)[:, 0], torch.stack(new_k), torch.stack(new_v)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """``config.json`` (format ``seqedge-transformer-baseline``) + ``model.safetensors``, atomically."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
        try:
            save_file({k: t.detach().contiguous().cpu() for k, t in self.state_dict().items()},
                      str(tmp / "model.safetensors"))
            payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": self.config.to_dict()}
            (tmp / "config.json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
            if directory.exists():
                shutil.rmtree(directory)
            os.replace(tmp, directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return directory

    @classmethod
    def load_pretrained(cls, directory: str | os.PathLike, map_location: str = "cpu") -> "TransformerModel":
        from safetensors.torch import load_file

        payload = json.loads((Path(directory) / "config.json").read_text())
        if payload.get("format") != FORMAT or payload.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory} is not a {FORMAT} v{FORMAT_VERSION} checkpoint")
        model = cls(TransformerConfig.from_dict(payload["model"]))
        model.load_state_dict(load_file(str(Path(directory) / "model.safetensors"), device=map_location))
        return model.to(map_location)

