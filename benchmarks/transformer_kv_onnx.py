"""The matched softmax-attention transformer as a KV-cache step in ONNX Runtime: the baseline of the latency plot.

Kept out of the library's export path on purpose: it exists to show, on the same machine and in the same
runtime, what a transformer's per-token latency and memory do as context grows while the Sequential Attention
step stays flat.

    step(tokens[B] int64, past_key.0, past_value.0, ...)            past_*: [B, H, S, hd] float32, S dynamic
      -> (logits[B, V] float32, present_key.0, present_value.0, ...)  present_*: [B, H, S + 1, hd]

The cache grows by one position per step (the plain "past_key_values" contract of most ONNX LLM exports), and
the position is the cache length, read from the input's shape. The math is the baseline's own
(seqedge.training.transformer: rotary q/k at the position, softmax over every cached position, gated output);
:func:`check_parity` compares the ONNX step token by token with the model's full causal forward.

Reaching a context of L tokens fills the cache with L random entries instead of running an O(L^2) prefill:
a softmax-attention step's cost depends on how long the cache is, not on what it holds. So the baseline's rows
report step latency and memory per context, not prefill speed.

Standalone: ``python benchmarks/transformer_kv_onnx.py --contexts 0,1k,16k --steps 20``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from seqedge.config import SequentialAttentionConfig
from seqedge.training.transformer import TransformerConfig, TransformerModel


class GrowingKVStep(nn.Module):
    """One decode step of :class:`TransformerModel` over a cache that grows by one position per call."""

    def __init__(self, model: TransformerModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        length = past[0].shape[2]                                   # S: tokens already in the cache
        pos = torch.arange(length, length + 1, device=tokens.device)  # [1]
        x = m.embed(tokens)[:, None]                                # [B, 1, D]
        presents = []
        for i, block in enumerate(m.blocks):
            h = block.attn_norm(x)
            q, k, v = block.attn._qkv(h, pos)                       # [B, H, 1, hd]
            k = torch.cat([past[2 * i], k], dim=2)                  # [B, H, S + 1, hd]
            v = torch.cat([past[2 * i + 1], v], dim=2)
            o = F.scaled_dot_product_attention(q, k, v)             # one query sees every cached position
            x = x + block.attn._out(h, o)
            x = x + block.mlp(block.mlp_norm(x))
            presents += [k, v]
        return (m._logits(x)[:, 0], *presents)


def cache_names(num_layers: int) -> tuple[list[str], list[str]]:
    inputs = [f"past_{kind}.{i}" for i in range(num_layers) for kind in ("key", "value")]
    return inputs, [n.replace("past_", "present_") for n in inputs]


def export_kv_step(model: TransformerModel, path: str | Path) -> Path:
    """Write the growing-cache step of ``model`` to ``path`` (ONNX, dynamic cache length)."""
    c = model.config
    L, H, hd = c.mlp.num_layers, c.mlp.num_heads, c.head_dim
    past_in, present_out = cache_names(L)
    example = (torch.tensor([1]), *[torch.randn(1, H, 8, hd) for _ in range(2 * L)])
    cache = torch.export.Dim("cache", min=0, max=1 << 22)
    dynamic = ({}, tuple({2: cache} for _ in range(2 * L)))     # *past arrives as one tuple
    path = Path(path)
    with torch.no_grad():
        program = torch.onnx.export(GrowingKVStep(model).eval(), example, dynamo=True, dynamic_shapes=dynamic,
                                    input_names=["tokens", *past_in], output_names=["logits", *present_out],
                                    opset_version=18, verbose=False)
    program.save(str(path))
    return path


class KVCacheStepper:
    """The exported step in ONNX Runtime as a latency-harness ``Stepper`` (batch 1; random cache fill)."""

    def __init__(self, onnx_path: str | Path, config: TransformerConfig, threads: int | None = None,
                 seed: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.config = config
        self.names = cache_names(config.mlp.num_layers)[0]
        self.rng = np.random.default_rng(seed)
        self.name = "transformer-kv/onnxruntime"
        self.reset()

    def reset(self) -> None:
        c = self.config
        self.cache = [np.zeros((1, c.mlp.num_heads, 0, c.head_dim), np.float32) for _ in self.names]

    def prefill(self, tokens: np.ndarray) -> None:
        """Append ``len(tokens)`` random cache entries (see the module docstring: cost depends on length only)."""
        n = len(tokens)
        if n:
            c = self.config
            self.cache = [np.concatenate([x, self.rng.standard_normal((1, c.mlp.num_heads, n, c.head_dim),
                                                                      dtype=np.float32)], axis=2)
                          for x in self.cache]
        return None

    def step(self, token: int) -> np.ndarray:
        feeds = {"tokens": np.asarray([token], np.int64), **dict(zip(self.names, self.cache))}
        logits, *self.cache = self.session.run(None, feeds)
        return logits[0]

    def memory_bytes(self) -> int:
        return int(sum(x.nbytes for x in self.cache))

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {"runtime": "onnxruntime", "onnxruntime": ort.__version__, "providers": self.session.get_providers(),
                "model": "matched causal softmax-attention transformer, KV cache growing by one per step",
                "cache_fill": "random entries up to each context (step cost depends on cache length only)"}


@torch.no_grad()
def check_parity(model: TransformerModel, onnx_path: str | Path, tokens: int = 24, tol: float = 1e-4) -> float:
    """Max |logit diff| of the ONNX step, fed token by token, against the model's causal forward (raises above
    ``tol``): the baseline computes the transformer it claims to."""
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (1, tokens), generator=gen)
    reference = model(ids)[0].numpy()                              # [T, V]
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = cache_names(model.config.mlp.num_layers)[0]
    c = model.config
    cache = [np.zeros((1, c.mlp.num_heads, 0, c.head_dim), np.float32) for _ in names]
    worst = 0.0
    for t in range(tokens):
        logits, *cache = sess.run(None, {"tokens": ids[:, t].numpy(), **dict(zip(names, cache))})
        worst = max(worst, float(np.abs(logits[0] - reference[t]).max()))
    if not worst <= tol:
        raise RuntimeError(f"transformer KV-cache ONNX step disagrees with the causal forward: max |logit diff| "
                           f"{worst:.3g} > {tol}")
    return worst


def build_baseline(config: SequentialAttentionConfig, out_dir: str | Path, checkpoint: str | Path | None = None,
                   seed: int = 0) -> tuple[TransformerModel, Path]:
    """The matched transformer (trained checkpoint, or random weights: latency does not depend on them),
    exported under ``out_dir`` and checked against its causal forward."""
    if checkpoint is not None:
        model = TransformerModel.load_pretrained(checkpoint).eval()
    else:
        torch.manual_seed(seed)
        model = TransformerModel(TransformerConfig.matching(config)).eval()
    path = export_kv_step(model, Path(out_dir) / "transformer_kv_step.onnx")
    check_parity(model, path)
    return model, path


def main(argv: list[str] | None = None) -> int:
    from seqedge.evaluate.latency import BenchConfig, bench_stepper, parse_contexts
    from seqedge.evaluate.latency_report import BenchReport, render_markdown, write_report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", help="Sequential Attention preset the transformer matches")
    p.add_argument("--checkpoint", help="trained baseline checkpoint (default: random weights)")
    p.add_argument("--contexts", default="0,1k,16k")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default=None, help="write transformer_kv.{json,md,png} here")
    args = p.parse_args(argv)
    config = BenchConfig(contexts=parse_contexts(args.contexts), steps=args.steps, warmup=2)
    with tempfile.TemporaryDirectory() as tmp:
        model, path = build_baseline(SequentialAttentionConfig.preset(args.preset), tmp, args.checkpoint)
        t0 = time.perf_counter()
        result = bench_stepper(KVCacheStepper(path, model.config), config, kind="baseline", measure_prefill=False)
        print(f"measured in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    report = BenchReport([result], [], config, title="transformer KV-cache baseline (ONNX Runtime)")
    if args.out:
        write_report(report, args.out, stem="transformer_kv")
    print(render_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
