"""The latency harness (seqedge/evaluate/latency.py, latency_report.py) and `seqedge bench`'s error paths.

Fast: a random tiny model behind a Session whose backend is a small torch stand-in defined here (so these tests
do not depend on any export target), tiny contexts, a handful of steps.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from seqedge.artifact import ARTIFACT_FORMAT, ARTIFACT_FORMAT_VERSION, Manifest, Variant, write_manifest
from seqedge.cli.main import main
from seqedge.evaluate.latency import (
    BenchConfig,
    SessionStepper,
    bench_stepper,
    format_context,
    latency_stats,
    parse_contexts,
    token_stream,
    total_tokens,
)
from seqedge.evaluate.latency_report import BenchReport, machine_info, render_markdown, write_report
from seqedge.runtimes.session import Session


class _TorchStandIn:
    """Runs the entry points with the model's own forward_tensors (the runtime modules are tested elsewhere)."""

    runtime = "standin"
    target = "standin"

    def __init__(self, model) -> None:
        self.model = model
        self.calls = {"step": 0, "chunk": 0}

    @torch.no_grad()
    def run(self, entry, tokens, state):
        self.calls[entry] += 1
        t = torch.from_numpy(tokens)
        s = [torch.from_numpy(x) for x in state]
        if entry == "step":
            logits, new = self.model.forward_tensors(t[:, None], s, step=True)
            logits = logits[:, 0]
        else:
            logits, new = self.model.forward_tensors(t, s)
        return logits.numpy(), [x.numpy() for x in new]

    def describe(self):
        return {"backend": "torch stand-in"}


def _manifest_data(config, model, variants=()):
    return {"format": ARTIFACT_FORMAT, "format_version": ARTIFACT_FORMAT_VERSION, "model": config.to_dict(),
            "fingerprint": model.fingerprint, "state": [s.to_dict() for s in model.state_specs],
            "chunk_size": config.chunk_size, "variants": list(variants)}


@pytest.fixture
def session(tmp_path, tiny_config, make_tiny_model):
    model = make_tiny_model(tiny_config)
    manifest = Manifest(tmp_path, _manifest_data(tiny_config, model))
    variant = Variant("standin", {"scheme": "none"}, {"model": {"path": "x", "sha256": "0" * 64, "bytes": 1234}})
    return Session(manifest, variant, _TorchStandIn(model), "standin")


SMALL = BenchConfig(contexts=(0, 40), steps=4, warmup=1, prefill_tokens=32, stepwise_tokens=6, ttft_prompt=8)


def test_parse_contexts():
    assert parse_contexts("0,1k,16k,64k") == (0, 1024, 16384, 65536)
    assert parse_contexts(" 64k, 0 ,100,100") == (0, 100, 65536)
    assert parse_contexts("1m") == (1024 ** 2,)
    assert [format_context(c) for c in (0, 100, 1024, 65536, 1024 ** 2)] == ["0", "100", "1k", "64k", "1m"]
    for bad in ("", "abc", "1g", "-5", "1k,,2k", "1.5k"):
        with pytest.raises(ValueError, match="context"):
            parse_contexts(bad)


def test_bench_config_validates():
    with pytest.raises(ValueError, match="steps"):
        BenchConfig(steps=0)
    with pytest.raises(ValueError, match="warmup"):
        BenchConfig(warmup=-1)
    with pytest.raises(ValueError, match="contexts 0 and 64 are closer than warmup"):
        BenchConfig(contexts=(0, 64), steps=100)
    assert BenchConfig(contexts="0,1k").contexts == (0, 1024)


def test_latency_stats_against_sorted_reference():
    rng = np.random.default_rng(0)
    ns = rng.integers(1_000, 5_000_000, size=257)
    stats = latency_stats(ns)
    ms = np.sort(ns / 1e6)
    # numpy's linear percentile on 257 samples: p50 is the 129th value, p90 the 231st + 0.4 of the gap
    assert stats["p50_ms"] == pytest.approx(ms[128])
    assert stats["p90_ms"] == pytest.approx(ms[230] + 0.4 * (ms[231] - ms[230]))
    assert stats["min_ms"] == pytest.approx(ms[0]) and stats["mean_ms"] == pytest.approx(ms.mean())
    assert stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]


def test_token_stream_is_real_deterministic_text():
    a, b = token_stream(5000), token_stream(5000)
    assert a.dtype == np.int64 and a.shape == (5000,)
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() < 256
    assert b"import" in bytes(a.astype(np.uint8))
    small = token_stream(5000, vocab_size=64)          # an imported model's small vocabulary: valid ids only
    assert small.max() < 64 and (small == a % 64).all()


class _Recorder:
    """A stepper that records which tokens it saw in which call, to check what the harness feeds."""

    name = "recorder"

    def __init__(self):
        self.seen, self.log = [], []

    def reset(self):
        self.seen = []
        self.log.append(("reset", 0))

    def prefill(self, tokens):
        self.seen += list(map(int, tokens))
        self.log.append(("prefill", len(tokens)))
        return np.zeros(3, np.float32) if len(tokens) else None

    def step(self, token):
        self.seen.append(int(token))
        self.log.append(("step", len(self.seen) - 1))   # context before this step
        return np.zeros(3, np.float32)

    def memory_bytes(self):
        return 7

    def describe(self):
        return {}


@pytest.mark.parametrize("warmup", [0, 2])
def test_sweep_reaches_each_context_with_one_contiguous_stream(warmup):
    stream = np.arange(10_000) % 250
    rec = _Recorder()
    cfg = BenchConfig(contexts=(0, 50, 300), steps=3, warmup=warmup, prefill_tokens=20, stepwise_tokens=4,
                      ttft_prompt=5)
    result = bench_stepper(rec, cfg, stream)
    # after the last reset, the sweep fed the stream in order, without gaps or repeats
    np.testing.assert_array_equal(rec.seen, stream[:len(rec.seen)])
    assert len(rec.seen) == 300 + warmup + 3
    sweep = rec.log[max(i for i, e in enumerate(rec.log) if e[0] == "reset") + 1:]
    steps_at = [pos for kind, pos in sweep if kind == "step"]
    # timed steps start right after context + warmup tokens, for every context
    for context in cfg.contexts:
        assert context + cfg.warmup in steps_at
    assert [c.context for c in result.contexts] == [0, 50, 300]
    assert result.contexts[2].reach_tokens == 300 - (50 + warmup + 3)
    assert all(c.memory_bytes == 7 for c in result.contexts)


def test_bench_session_writes_json_markdown_png(session, tmp_path):
    result = bench_stepper(SessionStepper(session), SMALL)
    assert result.name == "standin/fp32"
    assert [c.context for c in result.contexts] == [0, 40]
    for c in result.contexts:
        assert 0 < c.min_ms <= c.p50_ms <= c.p90_ms <= c.p99_ms
        # the state of a Sequential Attention model does not grow with context
        assert c.memory_bytes == sum(int(np.prod(s.concrete_shape(1))) * 4 for s in session.specs)
    assert result.prefill_tokens_per_s > 0 and result.stepwise_tokens_per_s > 0 and result.ttft_ms > 0
    assert result.peak_rss_bytes > 0
    # prefill went through the chunk path (C = 16): 32 tokens -> 2 chunk calls, no steps
    assert session.backend.calls["chunk"] >= 2

    report = BenchReport([result], [], SMALL, artifact="tiny", sections=["## Checks\n\nall fine"])
    paths = write_report(report, tmp_path / "out", stem="bench")
    data = json.loads(paths["json"].read_text())
    assert data["results"][0]["name"] == "standin/fp32"
    assert data["results"][0]["contexts"][1]["context"] == 40
    assert {"cpu", "cores", "os", "libraries"} <= set(data["machine"])
    assert data["config"]["contexts"] == [0, 40]
    md = paths["md"].read_text()
    assert "| standin/fp32 |" in md and "p50 @40" in md and "## Checks" in md and "Command:" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_lists_what_did_not_run():
    from seqedge.evaluate.latency import Skipped

    md = render_markdown(BenchReport([], [Skipped("coreml", "Core ML runs only on macOS")], SMALL))
    assert "## Not measured here" in md and "**coreml**: Core ML runs only on macOS" in md


def test_machine_info_names_the_machine():
    info = machine_info()
    assert info["cpu"] and info["cores"] >= 1 and "numpy" in info["libraries"]


# --- CLI error paths ------------------------------------------------------------------------------------------
def _artifact_without_variants(tmp_path, tiny_config, make_tiny_model):
    root = tmp_path / "art"
    root.mkdir()
    write_manifest(root, _manifest_data(tiny_config, make_tiny_model(tiny_config)))
    return root


@pytest.mark.parametrize("extra, message", [
    (["--contexts", "0,abc"], "context 'abc'"),
    (["--steps", "0"], "steps must be"),
    (["--runtimes", "onnxruntime,nope"], "unknown runtime(s) ['nope']"),
])
def test_bench_cli_rejects_bad_arguments(tmp_path, tiny_config, make_tiny_model, capsys, extra, message):
    art = _artifact_without_variants(tmp_path, tiny_config, make_tiny_model)
    assert main(["bench", "-m", str(art), "-q", "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bench_cli_missing_artifact(tmp_path, capsys):
    assert main(["bench", "-m", str(tmp_path / "missing"), "-q"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bench_cli_not_an_artifact(tmp_path, capsys):
    assert main(["bench", "-m", str(tmp_path), "-q"]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err


def test_bench_cli_lists_runtimes_that_cannot_run(tmp_path, tiny_config, make_tiny_model, capsys):
    art = _artifact_without_variants(tmp_path, tiny_config, make_tiny_model)
    code = main(["bench", "-m", str(art), "-q", "--contexts", "0", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    # every runtime is named with its reason, and the final error says nothing could be measured
    for runtime in ("onnxruntime", "executorch", "coreml", "tensorrt"):
        assert f"not measured: {runtime}:" in err
    assert "nothing could be measured" in err.splitlines()[-1]


# --- the transformer KV-cache baseline (benchmarks/transformer_kv_onnx.py) ------------------------------------
def _kv_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "transformer_kv_onnx.py"
    spec = importlib.util.spec_from_file_location("transformer_kv_onnx", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_transformer(tiny_config):
    from seqedge.training.transformer import TransformerConfig, TransformerModel

    torch.manual_seed(0)
    return TransformerModel(TransformerConfig.matching(tiny_config)).eval()


@torch.no_grad()
def test_growing_kv_step_matches_causal_forward(tiny_config):
    kv = _kv_module()
    model = _tiny_transformer(tiny_config)
    step = kv.GrowingKVStep(model)
    ids = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(3))
    reference = model(ids)[0]
    c = model.config
    past = [torch.full((1, c.mlp.num_heads, 0, c.head_dim), float("nan")) for _ in range(2 * c.mlp.num_layers)]
    for t in range(ids.shape[1]):
        logits, *past = step(ids[:, t], *past)
        torch.testing.assert_close(logits[0], reference[t], atol=1e-5, rtol=1e-5)
    assert past[0].shape[2] == ids.shape[1]     # the cache grew by one position per step


def test_kv_baseline_onnx_parity_and_growing_memory(tiny_config, tmp_path):
    pytest.importorskip("onnxruntime", reason="the KV-cache baseline runs in ONNX Runtime")
    kv = _kv_module()
    model = _tiny_transformer(tiny_config)
    path = kv.export_kv_step(model, tmp_path / "kv.onnx")
    assert kv.check_parity(model, path, tokens=12) <= 1e-4
    result = bench_stepper(kv.KVCacheStepper(path, model.config), BenchConfig(
        contexts=(0, 64), steps=3, warmup=1, prefill_tokens=4, stepwise_tokens=3, ttft_prompt=4),
        kind="baseline", measure_prefill=False)
    assert result.ttft_ms is None and result.prefill_tokens_per_s is None
    small, large = result.contexts
    per_position = 2 * model.config.mlp.num_layers * model.config.mlp.hidden_size * 4
    assert small.memory_bytes == per_position * (0 + 1 + 3)
    assert large.memory_bytes == per_position * (64 + 1 + 3)


class _StandInRuntime:
    """A runtime factory for the stand-in backend, registered only inside the tests below."""

    runtime = target = "standin"
    fail = False

    def check_available(self):
        pass

    def open(self, manifest, variant, **options):
        from seqedge.model import SequentialAttentionModel

        torch.manual_seed(0)
        backend = _TorchStandIn(SequentialAttentionModel(manifest.config).eval())
        if self.fail:
            def broken(entry, tokens, state):
                raise RuntimeError("stand-in backend broke")
            backend.run = broken
        return backend


@pytest.mark.parametrize("fail", [False, True])
def test_bench_cli_end_to_end_with_a_registered_runtime(tmp_path, tiny_config, make_tiny_model, capsys, monkeypatch,
                                                        fail):
    import sys
    import types

    from seqedge.runtimes import base

    module = types.ModuleType("seqedge_test_standin_runtime")
    module.Factory = type("Factory", (_StandInRuntime,), {"fail": fail})
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(base.RUNTIMES, "standin", f"{module.__name__}:Factory")
    root = tmp_path / "art"
    root.mkdir()
    variant = {"target": "standin", "quantization": {"scheme": "none"},
               "files": {"weights": {"path": "w", "sha256": "0" * 64, "bytes": 4096}}, "info": {}}
    write_manifest(root, _manifest_data(tiny_config, make_tiny_model(tiny_config), [variant]))
    out = tmp_path / "out"
    code = main(["bench", str(root), "--runtimes", "standin", "coreml", "--contexts", "0,32", "--steps", "3",
                 "--warmup", "1", "--prefill-tokens", "32", "--stepwise-tokens", "4", "--ttft-prompt", "4",
                 "--no-progress", "--out", str(out)])
    captured = capsys.readouterr()
    assert "not measured: coreml:" in captured.err
    if fail:
        assert code == 2 and "standin/fp32: failed: RuntimeError: stand-in backend broke" in captured.err
        return
    assert code == 0
    data = json.loads((out / "bench.json").read_text())
    assert [r["name"] for r in data["results"]] == ["standin/fp32"]
    assert data["results"][0]["artifact_bytes"] == 4096
    assert [s["name"] for s in data["skipped"]] == ["coreml"]
    assert "| standin/fp32 | 4.0 KiB |" in captured.out and (out / "bench.png").is_file()


class _SlowOnce(_Recorder):
    """A stepper whose steps are slow at context >= 300 during one sweep only (another process's load)."""

    def __init__(self, slow_sweep: int = 1):
        super().__init__()
        self.resets = 0
        self.slow_reset = 3 + slow_sweep          # resets before the sweeps: ttft, prefill, token-by-token

    def reset(self):
        super().reset()
        self.resets += 1

    def step(self, token):
        if len(self.seen) >= 300 and self.resets == self.slow_reset:
            time.sleep(0.003)
        return super().step(token)


@pytest.mark.parametrize("slow_sweep", [1, 2])
def test_each_context_keeps_its_fastest_sweep(slow_sweep):
    stream = np.arange(10_000) % 250
    cfg = BenchConfig(contexts=(0, 300), steps=5, warmup=1, prefill_tokens=20, stepwise_tokens=4, ttft_prompt=5,
                      sweeps=2)
    one = bench_stepper(_SlowOnce(), BenchConfig(**{**cfg.__dict__, "sweeps": 1}), stream)
    assert one.contexts[1].p50_ms >= 3.0                  # a single sweep reports the disturbed pass
    stepper = _SlowOnce(slow_sweep)
    two = bench_stepper(stepper, cfg, stream)
    assert stepper.resets == 5                            # both sweeps started from a fresh state
    assert two.contexts[1].p50_ms < 3.0 and two.flatness < one.flatness
    assert [c.context for c in two.contexts] == [0, 300]
    assert total_tokens(cfg) == total_tokens(BenchConfig(**{**cfg.__dict__, "sweeps": 1})) + cfg.stream_length() - 1
    with pytest.raises(ValueError, match="sweeps"):
        BenchConfig(sweeps=0)
