"""The step floor (machine limits, bytes and FLOPs of a step) and the per-model thread choice."""

from __future__ import annotations

import pytest
from seqedge.runtimes.threads import SINGLE_THREAD_FLOPS, check_threads, default_threads

from seqedge.config import SequentialAttentionConfig
from seqedge.evaluate.floor import MachineLimits, measure_limits, step_floor, step_flops

LIMITS = MachineLimits(bandwidth_by_bytes={1 << 20: 100e9, 1 << 28: 10e9}, peak_flops=1e11)


def test_bandwidth_is_read_at_the_working_set_that_holds_the_bytes():
    assert LIMITS.bandwidth(1000) == 100e9 and LIMITS.bandwidth(1 << 20) == 100e9
    assert LIMITS.bandwidth((1 << 20) + 1) == 10e9 and LIMITS.bandwidth(1 << 40) == 10e9


def test_step_floor_is_the_larger_of_memory_and_compute():
    memory = step_floor(weight_bytes=100 << 20, state_bytes=0, flops=1000, limits=LIMITS)
    assert memory["bound"] == "memory" and memory["floor_ms"] == pytest.approx(1e3 * (100 << 20) / 10e9)
    compute = step_floor(weight_bytes=1000, state_bytes=500, flops=10 ** 9, limits=LIMITS)
    assert compute["bound"] == "compute" and compute["floor_ms"] == pytest.approx(10.0)
    assert compute["memory_ms"] == pytest.approx(1e3 * 2000 / 100e9)          # the state is read and written
    with pytest.raises(ValueError, match="flops"):
        step_floor(1, 1, -1, LIMITS)


def test_limits_are_validated_and_measured():
    with pytest.raises(ValueError, match="peak_flops"):
        MachineLimits({1 << 20: 1e9}, peak_flops=0)
    with pytest.raises(ValueError, match="bandwidth_by_bytes"):
        MachineLimits({}, peak_flops=1.0)
    limits = measure_limits(copy_sizes=(1 << 20, 1 << 22), matmul_n=64, passes=2)
    assert sorted(limits.bandwidth_by_bytes) == [1 << 20, 1 << 22] and limits.peak_flops > 0


def test_step_flops_counts_every_matrix_product_once():
    c = SequentialAttentionConfig(hidden_size=32, num_layers=2, num_heads=2, head_k_dim=16, head_v_dim=16,
                                  gate_rank=4, chunk_size=16, mlp_multiple_of=16)
    import torch

    from seqedge.model import SequentialAttentionModel

    model = SequentialAttentionModel(c)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    tied_head = c.vocab_size * c.hidden_size                      # the embedding, used as the output head
    scan = 4 * c.num_layers * c.num_heads * c.head_k_dim * c.head_v_dim
    assert step_flops(c) == 2 * (weights + tied_head) + scan


def test_threads_follow_the_model_size_and_can_be_overridden():
    small = SequentialAttentionConfig(hidden_size=192, num_layers=4, num_heads=3, head_k_dim=64, head_v_dim=64,
                                      gate_rank=16)
    large = SequentialAttentionConfig(hidden_size=768, num_layers=24, num_heads=12, head_k_dim=64, head_v_dim=64)
    assert step_flops(small) < SINGLE_THREAD_FLOPS <= step_flops(large)
    assert default_threads(small) == 1 and default_threads(large) is None
    assert check_threads(None) is None and check_threads(3) == 3
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="threads"):
            check_threads(bad)


def test_bench_results_carry_the_floor_and_the_report_prints_it():
    from types import SimpleNamespace

    from seqedge.evaluate.latency import ContextResult, RunResult, attach_floor, step_weight_bytes
    from seqedge.evaluate.latency_report import floor_markdown
    from seqedge.state import state_nbytes, state_specs

    config = SequentialAttentionConfig(hidden_size=32, num_layers=2, num_heads=2, head_k_dim=16, head_v_dim=16,
                                       gate_rank=4, chunk_size=16, mlp_multiple_of=16)
    variant = SimpleNamespace(files={"step": {"bytes": 1000}, "chunk": {"bytes": 2000}, "weights": {"bytes": 5 << 20}},
                              info={})
    assert step_weight_bytes(variant) == 1000 + (5 << 20)
    manifest = SimpleNamespace(config=config, state_specs=state_specs(config))
    context = ContextResult(0, 2.0, 2.0, 2.0, 2.0, 2.0, 0.0, 0, 0, None)
    result = RunResult("onnxruntime/fp32", "seqedge", [context], None, None, 1.0, 0, None, info={"threads": 1})
    attach_floor(result, variant, manifest, LIMITS)
    floor = result.info["floor"]
    want = 1e3 * (1000 + (5 << 20) + 2 * state_nbytes(manifest.state_specs)) / 10e9
    assert floor["floor_ms"] == pytest.approx(want) and floor["p50_over_floor"] == pytest.approx(2.0 / want)
    text = "\n".join(floor_markdown([result]))
    assert "| onnxruntime/fp32 | 1 |" in text and f"{2.0 / want:.1f}x" in text


def test_bandwidth_is_measured_with_every_usable_core():
    """Copies run in one slice per thread at once (one core does not saturate the memory bus); the method says
    how many; a thread count below one is refused."""
    limits = measure_limits(copy_sizes=(1 << 20,), matmul_n=32, passes=1, threads=3)
    assert "in 3 at once" in limits.method and limits.bandwidth_by_bytes[1 << 20] > 0
    with pytest.raises(ValueError, match="threads"):
        measure_limits(copy_sizes=(1 << 20,), matmul_n=32, passes=1, threads=0)
