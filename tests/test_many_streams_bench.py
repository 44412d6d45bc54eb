"""benchmarks/many_streams.py on the CPU: the KV-cache baseline's static-cache step against the transformer's full
causal forward, the cache and state byte formulas against allocated tensors, the statistics and OOM rows of one
point, the parameter-matched baseline width, and the report built from a smoke run."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from seqedge.config import SequentialAttentionConfig
from seqedge.model import SequentialAttentionModel
from seqedge.training.transformer import TransformerConfig, TransformerModel

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def ms():
    """The script's functions (run as a file: benchmarks/ is no package)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "many_streams.py"
    return SimpleNamespace(**runpy.run_path(str(script)))


def _transformer(heads: int = 3, seed: int = 0) -> TransformerModel:
    cfg = SequentialAttentionConfig(hidden_size=48, num_layers=2, num_heads=heads, head_k_dim=16, head_v_dim=16,
                                    vocab_size=97, mlp_multiple_of=16)
    torch.manual_seed(seed)
    return TransformerModel(TransformerConfig.matching(cfg)).eval()


@torch.no_grad()
@pytest.mark.parametrize("batch, tokens, slots", [(1, 9, 9), (3, 7, 11)])
def test_static_kv_step_matches_full_forward(ms, batch, tokens, slots):
    model = _transformer()
    ids = torch.randint(0, 97, (batch, tokens), generator=torch.Generator().manual_seed(batch))
    reference = model(ids)                                               # [B, T, V], causal SDPA
    dec = ms.StaticKVDecoder(model, batch, slots, capture=False, masked=True)
    for t in range(tokens):
        torch.testing.assert_close(dec.step(ids[:, t]), reference[:, t], atol=1e-5, rtol=1e-5)
    assert int(dec.pos) == tokens
    assert dec.states[0][:, :, :, tokens:].abs().sum() == 0             # slots past the last token untouched


@torch.no_grad()
def test_full_ring_attends_to_every_slot(ms):
    """Unmasked (the benchmark's mode), the step at position p over a ring of S slots equals the full forward's
    last position over the S tokens the ring holds: the last S - 1 from the cache and p itself."""
    model = _transformer(seed=1)
    S, T = 5, 8
    ids = torch.randint(0, 97, (2, T), generator=torch.Generator().manual_seed(7))
    filling = ms.StaticKVDecoder(model, 2, S, capture=False, masked=True)
    ring = ms.StaticKVDecoder(model, 2, S, capture=False, masked=False)
    for t in range(S):
        filling.step(ids[:, t])
    for cache, filled in zip(ring.states, filling.states):
        cache.copy_(filled)
    ring.pos.fill_(S)
    got = ring.step(ids[:, S])                                           # overwrites slot 0 (token 0)
    # positions 1..S: rotary angles are relative in q.k, so the window's own forward from 0 gives the same scores
    want = model(ids[:, 1:S + 1])[:, -1]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_cache_bytes_match_the_allocated_caches(ms, dtype):
    model = _transformer().to(dtype)
    for streams, context in [(1, 1), (3, 17), (4, 64)]:
        dec = ms.StaticKVDecoder(model, streams, context, capture=False)
        allocated = sum(t.numel() * t.element_size() for t in dec.states)
        assert ms.kv_cache_bytes(model.config, streams, context, torch.finfo(dtype).bits // 8) == allocated


def test_state_bytes_per_stream_match_init_state(ms):
    model = SequentialAttentionModel(SequentialAttentionConfig.preset("tiny"))
    state = model.init_state(5)
    assert ms.state_bytes_per_stream(model) * 5 == sum(t.numel() * t.element_size() for t in state.tensors)


def test_baseline_width_matches_parameters(ms):
    tiny = SequentialAttentionConfig.preset("tiny")
    assert ms.baseline_config(tiny, 0) == TransformerConfig.matching(tiny)           # MLP models: the matched one
    no_mlp = SequentialAttentionConfig(hidden_size=128, num_layers=3, num_heads=2, head_k_dim=64, head_v_dim=64,
                                       mixer=dict(mlp=False))
    target = ms.transformer_count(no_mlp, 512) + 1000
    cfg = ms.baseline_config(no_mlp, target)
    assert cfg.mlp.mlp_hidden_size == 512
    with torch.device("meta"):
        assert TransformerModel(cfg).num_parameters() == ms.transformer_count(cfg.mlp, 512)


def test_summary_statistics(ms):
    times = list(np.random.default_rng(0).uniform(1.0, 3.0, 257))
    row = ms.summarize(times, streams=64)
    assert row["steps"] == 257
    assert row["p50_ms"] == pytest.approx(np.median(times))
    assert row["p99_ms"] == pytest.approx(np.percentile(times, 99))
    assert row["tokens_per_s"] == pytest.approx(64 * 257 / (sum(times) / 1e3))


def test_out_of_memory_point_is_recorded(ms):
    def make():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 800.00 GiB\nmore detail")

    row = ms.run_point(make, streams=1024, vocab=97, needed_bytes=123, device=CPU,
                       timing=dict(budget_s=0.0, min_steps=1, max_steps=1))
    assert row == {"streams": 1024, "needed_bytes": 123, "status": "OOM",
                   "error": "CUDA out of memory. Tried to allocate 800.00 GiB"}


def test_smoke_run_writes_the_report(ms, tmp_path, capsys):
    assert ms.main(["--smoke", "--models", "tiny", "--streams", "1,2", "--more-streams", "4", "--contexts", "8",
                    "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "many_streams.json").read_text())
    rows = record["models"]["tiny"]["rows"]
    assert [(r["engine"], r["context"], r["streams"], r["status"]) for r in rows] == [
        ("seqedge", None, 1, "ok"), ("seqedge", None, 2, "ok"), ("seqedge", None, 4, "ok"), ("kv", 8, 1, "ok"),
        ("kv", 8, 2, "ok")]
    assert all(r["steps"] == 3 and r["p99_ms"] >= r["p50_ms"] > 0 for r in rows)
    md = (tmp_path / "many_streams.md").read_text()
    assert "| seqedge | any | 2 | EagerStepDecoder |" in md and "| KV transformer | 8 | 1 | StaticKVDecoder |" in md
    record["models"]["tiny"]["rows"].append({"engine": "kv", "context": 8, "streams": 4096, "status": "OOM",
                                             "needed_bytes": 3 * 2**30})
    record["models"]["tiny"]["rows"].append({"engine": "kv", "context": 8, "streams": 8192,
                                             "status": "skipped (deadline)"})
    md = ms.render(record)
    assert "| KV transformer | 8 | 4096 | - | OOM (state/cache alone: 3.0 GiB) | - | - | 0.75 | - | - | - |" in md
    assert "| KV transformer | 8 | 8192 | - | skipped (deadline) |" in md


def test_capacity_from_the_measured_slope(ms):
    rows = [{"engine": "kv", "context": 8, "streams": b, "status": "ok", "peak_bytes": 5 * 2**20 + b * 2**21}
            for b in (16, 64)] + [{"engine": "kv", "context": 8, "streams": 256, "status": "OOM"}]
    lines = ms.capacity_lines(rows, gpu_bytes=2**30)
    assert lines[2] == ("- KV transformer at context 8: 2.00 MiB peak per added stream (16 -> 64 streams): "
                        "about 512 streams would fit in the card's 1 GiB")
    assert ms.capacity_lines(rows[:1], gpu_bytes=2**30) == [] and ms.capacity_lines(rows, None) == []


def test_failed_point_is_recorded_with_its_error(ms):
    def make():
        raise RuntimeError("Triton compilation failed\ndetails")

    row = ms.run_point(make, streams=2, vocab=97, needed_bytes=5, device=CPU,
                       timing=dict(budget_s=0.0, min_steps=1, max_steps=1))
    assert row["status"] == "failed" and row["error"] == "RuntimeError: Triton compilation failed"
