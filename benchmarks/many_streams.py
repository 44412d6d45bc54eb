"""Many concurrent streams on one GPU: aggregate tokens/s, p50/p99 inter-token latency and GPU memory per stream
against the number of streams, for Sequential Attention models and, in the same run, a KV-cache transformer of
the same size at two contexts. Records where each runs out of memory.

    python -P benchmarks/many_streams.py [--models small,base,mamba2-130m] [--streams 1,16,64,256,1024]
                                         [--contexts 1k,16k] [--deadline 420] [--out DIR] [--smoke]

Sequential Attention rows decode through the cuda runtime's decoder for the model
(:class:`runtimes.cuda_runtime.CudaBackend`, one CUDA-graph decoder per batch size; the row names the class that
ran), bf16 weights with seeded random values, float32 state. ``mamba2-130m`` is imported the way a user's model is:
transformers' ``Mamba2ForCausalLM`` with mamba2-130m's config and seeded random weights (benchmarks/hf_models.py),
saved and read back by :func:`seqedge.families.import_hf`.

The transformer rows decode :class:`seqedge.training.transformer.TransformerModel` (the matched baseline: same
width, depth, heads, vocabulary and SwiGLU; for a model without MLP blocks, an MLP width that brings the parameter
count closest to it) with a static bf16 KV cache of ``context`` slots per stream and PyTorch's
``scaled_dot_product_attention``, one CUDA graph per point.

Both state kinds start filled with random values instead of a prefill: a step's cost does not depend on what the
state or the cache holds, only on its size, and the recurrent state's size does not depend on the context at
all. The KV cache is a ring of ``context`` slots (each step overwrites the oldest entry), so every timed step
attends over exactly ``context`` cached tokens.

One step advances every stream by one token, so the inter-token latency is the time of one decode step of the
whole batch (CUDA events around each graph replay, after a warm-up) and tokens/s = streams / mean step time.
Sampling is left out of both (logits stay on the GPU). Memory per point is the peak ``max_memory_allocated``
above what was allocated before its decoder was built (weights excluded), beside the formula for the state or
cache bytes. A point that raises ``torch.cuda.OutOfMemoryError`` is recorded as OOM with the bytes its state or
cache alone would need; points not reached before ``--deadline`` seconds are recorded as skipped.

``--smoke`` runs tiny models on the CPU (``model.step``'s math behind the same decoder interface, no graph) to
check the script end to end. Writes ``many_streams.{json,md}`` to ``--out`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from seqedge.config import SequentialAttentionConfig
from seqedge.kernels.decode_graph import StaticDecoder
from seqedge.model import SequentialAttentionModel
from seqedge.training.transformer import TransformerConfig, TransformerModel

ROOT = Path(__file__).resolve().parents[1]
STREAMS = (1, 16, 64, 256, 1024)
CONTEXTS = (1024, 16384)
MODELS = ("small", "base", "mamba2-130m")
MORE_STREAMS = (4096, 16384)          # the recurrent decoders only: where they run out
# the smoke run: tiny shapes on the CPU (a Mamba2 of the same layout, far narrower)
SMOKE = dict(models=("tiny", "mamba2-tiny"), streams=(1, 3), more_streams=(5,), contexts=(16, 40))
MAMBA2_TINY = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, state_size=16, head_dim=16, num_heads=8)


# --- models ---------------------------------------------------------------------------------------------------
def _hf_models():
    """benchmarks/hf_models.py by path: the script runs under ``python -P``, which keeps its folder off sys.path."""
    spec = importlib.util.spec_from_file_location("hf_models", Path(__file__).with_name("hf_models.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_seqedge(name: str, seed: int) -> SequentialAttentionModel:
    """A preset with seeded random weights, or a Mamba2 imported from a transformers folder (float32, CPU)."""
    if not name.startswith("mamba2"):
        torch.manual_seed(seed)
        return SequentialAttentionModel(SequentialAttentionConfig.preset(name)).eval()
    from seqedge.families import import_hf

    hf = _hf_models()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "hf"
        if name == "mamba2-130m":
            hf.make_mamba2_130m(folder, seed)
        else:
            from transformers import Mamba2Config, Mamba2ForCausalLM

            torch.manual_seed(seed)
            Mamba2ForCausalLM(Mamba2Config(**{**hf.MAMBA2_130M, **MAMBA2_TINY})).save_pretrained(folder)
        return import_hf(folder)


def transformer_count(config: SequentialAttentionConfig, mlp_width: int) -> int:
    """Parameters of :class:`TransformerModel` for ``config``'s shape with a SwiGLU of ``mlp_width``."""
    D, L, V = config.hidden_size, config.num_layers, config.vocab_size
    per_layer = 5 * D * D + 3 * D * mlp_width + 2 * D        # qkv, out_gate, out_proj; gate_up, down; two norms
    return V * D * (1 if config.tie_embeddings else 2) + L * per_layer + D


def baseline_config(config: SequentialAttentionConfig, params: int) -> TransformerConfig:
    """The matched transformer of ``config``; a model without MLP blocks gets the SwiGLU width (a multiple of 64)
    whose parameter count comes closest to ``params``, since attention alone would be much smaller."""
    if config.mixer.mlp:
        return TransformerConfig.matching(config)
    D, L = config.hidden_size, config.num_layers
    width = max(64, 64 * round((params - transformer_count(config, 0)) / (3 * D * L * 64)))
    return TransformerConfig.matching(dataclasses.replace(config, intermediate_size=width))


def build_transformer(config: TransformerConfig, seed: int, dtype: torch.dtype, device) -> TransformerModel:
    torch.manual_seed(seed)
    model = TransformerModel(config).eval().to(device=device, dtype=dtype)
    for block in model.blocks:     # rotary frequencies stay float32, as a bf16 model's RoPE tables usually do
        block.attn.inv_freq = block.attn.inv_freq.float()
    return model


# --- the KV-cache decoder ---------------------------------------------------------------------------------------
def kv_cache_shape(config: TransformerConfig, streams: int, context: int) -> tuple[int, ...]:
    """``[L, B, H, S, hd]``: one of the two caches (keys, values)."""
    c = config.mlp
    return c.num_layers, streams, c.num_heads, context, config.head_dim


def kv_cache_bytes(config: TransformerConfig, streams: int, context: int, itemsize: int) -> int:
    """Bytes of the key and value caches of ``streams`` streams holding ``context`` tokens each."""
    return 2 * math.prod(kv_cache_shape(config, streams, context)) * itemsize


def kv_step(model: TransformerModel, tokens, k_cache, v_cache, pos, masked: bool) -> torch.Tensor:
    """tokens ``[B]`` at position ``pos`` (0-d int64) over caches ``[L, B, H, S, hd]`` (updated in place at slot
    ``pos % S``) -> logits ``[B, V]`` float32. ``masked``: attend only to slots ``<= pos`` (a cache still filling
    from position 0); otherwise every slot holds a token and the attention takes no mask."""
    S = k_cache.shape[3]
    at, slot = pos.reshape(1), (pos % S).reshape(1)
    mask = (torch.arange(S, device=tokens.device) <= pos).view(1, 1, 1, S) if masked else None   # over B, H, q
    x = model.embed(tokens)[:, None]                                                # [B, 1, D]
    for i, block in enumerate(model.blocks):
        h = block.attn_norm(x)
        q, k, v = block.attn._qkv(h, at)                                            # [B, H, 1, hd]
        k_cache[i].index_copy_(2, slot, k.to(k_cache.dtype))
        v_cache[i].index_copy_(2, slot, v.to(v_cache.dtype))
        o = F.scaled_dot_product_attention(q, k_cache[i], v_cache[i], attn_mask=mask)
        x = x + block.attn._out(h, o)
        x = x + block.mlp(block.mlp_norm(x))
    return model._logits(x)[:, 0]


class StaticKVDecoder(StaticDecoder):
    """:class:`TransformerModel` decoding ``batch_size`` streams over static K/V caches of ``context`` slots, with
    the seqedge decoders' interface (``step(tokens [B]) -> logits [B, V]``, ``states``, ``reset``).

    ``masked=False`` (the benchmark): the caches start full of random entries at position ``context`` and each
    step overwrites the oldest slot, so it attends over ``context`` tokens. ``masked=True``: they start empty at
    position 0 (for checking against the full forward; valid for ``context`` steps)."""

    def __init__(self, model: TransformerModel, batch_size: int, context: int, capture: bool = True,
                 masked: bool = False, warmup: int = 2, seed: int = 0) -> None:
        device, dtype = model.embed.weight.device, model.embed.weight.dtype
        self.model, self.batch_size, self.context, self.masked = model, batch_size, context, masked
        self.tokens = torch.zeros(batch_size, dtype=torch.int64, device=device)
        shape = kv_cache_shape(model.config, batch_size, context)
        self.states = [torch.empty(shape, dtype=dtype, device=device) for _ in range(2)]      # K, V
        self.pos = torch.zeros((), dtype=torch.int64, device=device)
        self._gen = torch.Generator(device=device).manual_seed(seed)
        self.reset()
        if capture:
            self._capture(warmup)

    def reset(self, state=None) -> None:
        if state is not None:
            raise ValueError("StaticKVDecoder.reset takes no state: it refills the caches itself")
        for cache in self.states:
            cache.zero_() if self.masked else cache.normal_(generator=self._gen)
        self.pos.fill_(0 if self.masked else self.context)

    def _body(self) -> torch.Tensor:
        logits = kv_step(self.model, self.tokens, *self.states, self.pos, self.masked)
        self.pos += 1
        return logits


class EagerStepDecoder(StaticDecoder):
    """``model.step``'s math behind the decoders' interface, without a graph: the smoke run's decoder on CPU."""

    def __init__(self, model: SequentialAttentionModel, batch_size: int) -> None:
        self._static_buffers(model, batch_size, model.embed.weight.device)

    def _body(self) -> torch.Tensor:
        logits, new = self.model.forward_tensors(self.tokens[:, None], self.states, step=True)
        for buf, t in zip(self.states, new):
            buf.copy_(t)
        return logits[:, 0]


def seqedge_decoder(model: SequentialAttentionModel, streams: int, smoke: bool):
    """The decoder the cuda runtime builds for ``model`` at this batch size (CPU smoke: EagerStepDecoder), its
    state buffers filled with random values."""
    if smoke:
        dec = EagerStepDecoder(model, streams)
    else:
        from seqedge.runtimes.cuda_runtime import CudaBackend

        # the runtime's own choice of decoder, bypassing Session.step's copy of the logits to the host
        dec = CudaBackend(model, model.embed.weight.device).new_decoder(streams)
    gen = torch.Generator(device=model.embed.weight.device).manual_seed(streams)
    for buf in dec.states:
        buf.normal_(std=0.1, generator=gen)
    return dec


def state_bytes_per_stream(model: SequentialAttentionModel) -> int:
    """Bytes of one stream's recurrent state (conv tails and scan matrices, float32): the same at every context."""
    return sum(math.prod(s.concrete_shape(1)) * 4 for s in model.state_specs)


# --- timing and one point ---------------------------------------------------------------------------------------
def step_times_ms(step: Callable[[], object], device: torch.device, budget_s: float, min_steps: int,
                  max_steps: int, warmup: int = 3) -> list[float]:
    """Per-step times (ms) of ``step`` run back to back after ``warmup``: CUDA events around each call on a GPU,
    the wall clock on the CPU; as many steps as fit ``budget_s`` (by the warm-up's pace), within the bounds."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    pace = (time.perf_counter() - t0) / warmup
    n = int(min(max_steps, max(min_steps, budget_s / max(pace, 1e-6))))
    if not cuda:
        marks = [time.perf_counter()]
        for _ in range(n):
            step()
            marks.append(time.perf_counter())
        return [1e3 * (b - a) for a, b in zip(marks, marks[1:])]
    events = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
    events[0].record()
    for i in range(n):
        step()
        events[i + 1].record()
    events[-1].synchronize()
    return [a.elapsed_time(b) for a, b in zip(events, events[1:])]


def summarize(times_ms: list[float], streams: int) -> dict:
    """Step statistics of one point: steps, p50/p99/mean ms per step and aggregate tokens/s (one token per stream
    per step)."""
    t = np.asarray(times_ms, dtype=np.float64)
    mean = float(t.mean())
    return {"steps": len(t), "p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99)),
            "mean_ms": mean, "tokens_per_s": streams * 1e3 / mean}


@torch.no_grad()
def run_point(make: Callable[[], StaticDecoder], streams: int, vocab: int, needed_bytes: int,
              device: torch.device, timing: dict) -> dict:
    """Build a decoder with ``make()``, time its steps and measure its memory; an OOM anywhere gives a row
    ``status: OOM`` with ``needed_bytes`` (what the state or cache alone needs) and the free memory then."""
    cuda = device.type == "cuda"
    row: dict = {"streams": streams, "needed_bytes": needed_bytes}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    oom = None
    try:
        dec = make()
        tokens = torch.randint(0, vocab, (streams,), device=device)
        row["decoder"] = type(dec).__name__
        row.update(summarize(step_times_ms(lambda: dec.step(tokens), device, **timing), streams))
        row["status"] = "ok"
        if cuda:
            row["resident_bytes"] = torch.cuda.memory_allocated() - base        # the decoder alive, after its steps
            row["peak_bytes"] = torch.cuda.max_memory_allocated() - base
        del dec, tokens
    except torch.cuda.OutOfMemoryError as err:
        oom = str(err).split("\n")[0][:200]
    except (RuntimeError, ValueError) as err:    # recorded on the row, traceback on stderr; the run goes on
        traceback.print_exc()
        row.update(status="failed", error=f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
    if oom is not None:                      # outside the handler: the traceback's frames (and tensors) are gone
        row.update(status="OOM", error=oom)
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        if oom is not None:
            row["free_bytes_after"] = torch.cuda.mem_get_info()[0]
    return row


# --- the run ------------------------------------------------------------------------------------------------------
NOTES = [
    "inter-token latency = time of one decode step of the whole batch (each stream gets one token per step); "
    "tokens/s = streams / mean step time; sampling is not included (logits stay on the GPU)",
    "recurrent states start random instead of prefilled: a step's cost does not depend on the values, and the "
    "state's size does not depend on the context, so one row per stream count covers every context",
    "KV caches hold `context` random entries per stream (decode cost depends on the cache length, not its "
    "contents); a ring of `context` slots, so every timed step attends over exactly `context` tokens",
    "needed = the state or cache bytes alone (formula); resident = torch.cuda.memory_allocated after the timed "
    "steps, with the decoder alive, above what was allocated before it was built (weights excluded; graph pools, "
    "scratch and the fused decoder's packed weight copies included; memory a CUDA graph's private pool keeps "
    "reserved between replays is not counted); peak = torch.cuda.max_memory_allocated "
    "above the same point, construction included (a decoder that builds its state buffers from a fresh "
    "state holds two copies for a moment); an OOM row gives `needed` for what did not fit",
    "seqedge rows also run at stream counts past the transformer's (`more_streams`) to find where they run out",
]


def model_rows(name: str, streams: list[int], more_streams: list[int], contexts: list[int], device: torch.device,
               dtype: torch.dtype, smoke: bool, timing: dict, over: Callable[[], bool], seed: int,
               progress: Callable[[dict], None]) -> dict:
    """Every point of one model: the Sequential Attention decoder at each stream count (``more_streams`` too),
    then the matched KV-cache transformer at each context and stream count; ``progress(rows so far)`` after each
    point (a run cut short still leaves its results)."""
    model = build_seqedge(name, seed).to(device=device, dtype=dtype)
    tcfg = baseline_config(model.config, model.num_parameters())
    kv_model = build_transformer(tcfg, seed, dtype, device)
    itemsize = torch.finfo(dtype).bits // 8
    per_state = state_bytes_per_stream(model)
    info = {"seqedge_parameters": model.num_parameters(), "transformer_parameters": kv_model.num_parameters(),
            "transformer": {"num_heads": tcfg.mlp.num_heads, "head_dim": tcfg.head_dim,
                            "mlp_width": tcfg.mlp.mlp_hidden_size},
            "state_bytes_per_stream": per_state, "kv_bytes_per_token": kv_cache_bytes(tcfg, 1, 1, itemsize),
            "dtype": str(dtype).replace("torch.", ""), "rows": []}
    vocab = model.config.vocab_size
    points = [("seqedge", None, b) for b in streams + more_streams] + [("kv", c, b) for c in contexts for b in streams]
    for engine, context, b in points:
        head = {"engine": engine, "context": context}
        if over():
            info["rows"].append({**head, "streams": b, "status": "skipped (deadline)"})
            progress(info)
            continue
        if engine == "seqedge":
            row = run_point(lambda: seqedge_decoder(model, b, smoke), b, vocab, b * per_state, device, timing)
        else:
            row = run_point(lambda: StaticKVDecoder(kv_model, b, context, capture=not smoke), b, vocab,
                            kv_cache_bytes(tcfg, b, context, itemsize), device, timing)
        info["rows"].append({**head, **row})
        print(f"{name} {engine} context={context} streams={b}: {_cell(row)}", flush=True)
        progress(info)
    del model, kv_model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return info


def _cell(row: dict) -> str:
    if row["status"] != "ok":
        return row["status"]
    return f"{row['tokens_per_s']:.0f} tok/s, p50 {row['p50_ms']:.3f} ms, p99 {row['p99_ms']:.3f} ms"


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f}"


def render(record: dict) -> str:
    """The Markdown report: metadata, notes, then one table per model."""
    from seqedge.evaluate.run_info import metadata_markdown

    lines = ["# Many streams on one GPU: Sequential Attention beside a KV-cache transformer", "",
             *metadata_markdown(record["meta"]), f"- settings: {record['settings']}", "", "Notes:", "",
             *[f"- {n}" for n in NOTES], ""]
    for name, m in record["models"].items():
        t = m["transformer"]
        lines += [f"## {name}", "",
                  f"seqedge: {m['seqedge_parameters']:,} parameters, state {_mib(m['state_bytes_per_stream'])} MiB "
                  f"per stream (any context). Transformer: {m['transformer_parameters']:,} parameters "
                  f"({t['num_heads']} heads of {t['head_dim']}, MLP width {t['mlp_width']}), KV cache "
                  f"{m['kv_bytes_per_token'] / 2**10:.1f} KiB per token per stream. Weights {m['dtype']}.", "",
                  "| engine | context | streams | decoder | tokens/s | p50 ms | p99 ms | needed MiB/stream | "
                  "resident MiB/stream | peak MiB/stream | peak GiB total |",
                  "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in m["rows"]:
            engine = "seqedge" if r["engine"] == "seqedge" else "KV transformer"
            ctx = "any" if r["context"] is None else str(r["context"])
            needed = _mib(r["needed_bytes"] / r["streams"]) if "needed_bytes" in r else "-"
            if r["status"] != "ok":
                status = r["status"]
                if r["status"] == "OOM":
                    status = f"OOM (state/cache alone: {r['needed_bytes'] / 2**30:.1f} GiB)"
                elif r["status"] == "failed":
                    status = f"failed: {r['error'][:80]}"
                lines.append(f"| {engine} | {ctx} | {r['streams']} | - | {status} | - | - | {needed} | - | - | - |")
                continue
            per = lambda key: _mib(r[key] / r["streams"]) if key in r else "-"          # noqa: E731
            total = "-" if "peak_bytes" not in r else f"{r['peak_bytes'] / 2**30:.2f}"
            lines.append(f"| {engine} | {ctx} | {r['streams']} | {r['decoder']} | {r['tokens_per_s']:,.0f} | "
                         f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {needed} | {per('resident_bytes')} | "
                         f"{per('peak_bytes')} | {total} |")
        lines += ["", *capacity_lines(m["rows"], record["meta"].get("gpu_memory_bytes")), ""]
    return "\n".join(lines) + "\n"


def capacity_lines(rows: list[dict], gpu_bytes: int | None) -> list[str]:
    """Per engine and context: the peak bytes each added stream cost between the two largest measured stream
    counts, and how many streams that slope fits on the whole card (an extrapolation, weights left out)."""
    if not gpu_bytes:
        return []
    out = []
    for key in dict.fromkeys((r["engine"], r["context"]) for r in rows):
        ok = sorted((r["streams"], r["peak_bytes"]) for r in rows
                    if (r["engine"], r["context"]) == key and r["status"] == "ok" and "peak_bytes" in r)
        if len(ok) < 2 or ok[-1][1] <= ok[-2][1]:
            continue
        (b1, m1), (b2, m2) = ok[-2], ok[-1]
        slope = (m2 - m1) / (b2 - b1)
        name = "seqedge" if key[0] == "seqedge" else f"KV transformer at context {key[1]}"
        out.append(f"- {name}: {slope / 2**20:.2f} MiB peak per added stream ({b1} -> {b2} streams): about "
                   f"{int(gpu_bytes // slope):,} streams would fit in the card's {gpu_bytes / 2**30:.0f} GiB")
    return ["Extrapolated capacity:", "", *out] if out else []


def save(record: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("many_streams.json", json.dumps(record, indent=2) + "\n"),
                       ("many_streams.md", render(record))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def _ints(text: str) -> list[int]:
    return [int(x[:-1]) * 1024 if x.endswith("k") else int(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", help=f"comma list (default {','.join(MODELS)}; smoke: {','.join(SMOKE['models'])})")
    p.add_argument("--streams", help=f"comma list (default {','.join(map(str, STREAMS))})")
    p.add_argument("--more-streams", help="stream counts for the seqedge rows only, comma list "
                   f"(default {','.join(map(str, MORE_STREAMS))})")
    p.add_argument("--contexts", help="KV-cache contexts, comma list, k = 1024 (default 1k,16k)")
    p.add_argument("--deadline", type=float, default=420.0, help="seconds; later points are recorded as skipped")
    p.add_argument("--budget", type=float, default=1.0, help="timed seconds per point (steps within the bounds)")
    p.add_argument("--min-steps", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--commit", help="git commit of the source tree, where it is no git checkout (a copy)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU, a few steps: checks the script")
    args = p.parse_args(argv)
    defaults = SMOKE if args.smoke else dict(models=MODELS, streams=STREAMS, more_streams=MORE_STREAMS,
                                             contexts=CONTEXTS)
    args.models = args.models.split(",") if args.models else list(defaults["models"])
    args.streams = _ints(args.streams) if args.streams else list(defaults["streams"])
    args.contexts = _ints(args.contexts) if args.contexts else list(defaults["contexts"])
    args.more_streams = (_ints(args.more_streams) if args.more_streams is not None
                         else list(defaults["more_streams"]))
    if args.smoke:
        args.budget, args.min_steps, args.max_steps = 0.0, 3, 3
    return args


def main(argv: list[str] | None = None) -> int:
    from seqedge.evaluate.run_info import run_metadata

    args = parse_args(argv)
    start = time.perf_counter()
    if not args.smoke and not torch.cuda.is_available():
        print("many_streams: no CUDA GPU here (torch.cuda.is_available() is False); the benchmark times the cuda "
              "runtime's decoders. Run it on a machine with an NVIDIA GPU, or pass --smoke for a CPU check",
              file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    meta = run_metadata(card=device.type == "cuda")
    if args.commit:
        meta["commit"] = args.commit
    if device.type == "cuda":
        meta["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    record = {"meta": meta, "notes": NOTES, "models": {},
              "settings": dict(streams=args.streams, more_streams=args.more_streams, contexts=args.contexts,
                               deadline_s=args.deadline, budget_s=args.budget, min_steps=args.min_steps,
                               max_steps=args.max_steps, seed=args.seed, smoke=args.smoke)}
    timing = dict(budget_s=args.budget, min_steps=args.min_steps, max_steps=args.max_steps)
    over = lambda: time.perf_counter() - start > args.deadline          # noqa: E731
    def progress(name: str, info: dict) -> None:
        record["models"][name] = info
        record["elapsed_s"] = round(time.perf_counter() - start, 1)
        save(record, args.out)

    for name in args.models:
        model_rows(name, args.streams, args.more_streams, args.contexts, device, dtype, args.smoke, timing, over,
                   args.seed,
                   lambda info, name=name: progress(name, info))
    print(render(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
