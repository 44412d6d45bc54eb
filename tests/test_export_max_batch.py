"""The compiled targets' batch bound (``max_batch``): its validation, and the static single-stream export that
``max_batch=1`` gives ExecuTorch (the programs a one-sequence app runs in the least memory).

The lowered ExecuTorch program of bound 1 (run by the C++ runner and the Python session, which refuses a batch of
2) is checked in tests/test_runner_cpp.py, which already builds the runner."""

from __future__ import annotations

import pytest
import torch

from seqedge.export.base import DEFAULT_MAX_BATCH, MAX_BATCH_LIMIT, ExportContext, check_max_batch
from seqedge.export.quantization import QuantizationRecipe


@pytest.fixture
def tiny_model(make_tiny_model, tiny_config):
    return make_tiny_model(tiny_config)


@pytest.mark.parametrize("bad", [0, -1, MAX_BATCH_LIMIT + 1, True, 2.0, "4"])
def test_bad_bounds_are_refused_naming_the_range(bad, tmp_path):
    with pytest.raises(ValueError, match=rf"max_batch must be an integer in \[1, {MAX_BATCH_LIMIT}\].*got"):
        check_max_batch(bad)
    with pytest.raises(ValueError, match="max_batch"):
        ExportContext(None, tmp_path, QuantizationRecipe("none"), max_batch=bad)


def test_every_bound_in_range_is_accepted(tmp_path):
    assert [check_max_batch(b) for b in range(1, MAX_BATCH_LIMIT + 1)] == list(range(1, MAX_BATCH_LIMIT + 1))
    assert ExportContext(None, tmp_path, QuantizationRecipe("none")).max_batch == DEFAULT_MAX_BATCH


def test_export_model_refuses_a_bad_bound_before_writing(tiny_model, tmp_path):
    from seqedge.export.api import export_model

    with pytest.raises(ValueError, match="max_batch"):
        export_model(tiny_model, tmp_path / "a", [], max_batch=0)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("entry", ["step", "chunk"])
def test_executorch_entry_is_static_for_one_and_dynamic_above(tiny_model, entry):
    pytest.importorskip("executorch", reason="the executorch target's export needs executorch")
    from seqedge.export.executorch_target import _export_entry

    def batch_dims(program):
        user = set(program.graph_signature.user_inputs)
        inputs = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user]
        return [n.meta["val"].shape[0] for n in inputs]

    static = batch_dims(_export_entry(tiny_model, entry, 1))
    assert static and all(type(b) is int and b == 1 for b in static)   # nothing symbolic left to plan for
    dynamic = batch_dims(_export_entry(tiny_model, entry, 4))
    assert dynamic and all(isinstance(b, torch.SymInt) for b in dynamic)
