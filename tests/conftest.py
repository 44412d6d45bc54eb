"""Shared fixtures: a seeded generator and the tiny model of tests/_artifacts.py as config, model and checkpoint."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from _artifacts import TINY_DIMS, build_model
from seqedge.config import SequentialAttentionConfig

# Tests use tiny tensors, where intra-op threads only add overhead, and on a shared 2-core machine an
# oversubscribed OpenMP pool makes a gradcheck an order of magnitude slower. One thread: stable timings.
torch.set_num_threads(1)


@pytest.fixture
def gen() -> torch.Generator:
    """A CPU generator with a fixed seed: every test draws fresh but repeatable random inputs."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def make_tiny_config() -> Callable[..., SequentialAttentionConfig]:
    """``make_tiny_config(update_rule="delta", chunk_size=32, ...)``: the tiny test config with overrides."""

    def make(**overrides: Any) -> SequentialAttentionConfig:
        return SequentialAttentionConfig(**{**TINY_DIMS, **overrides})

    return make


@pytest.fixture
def tiny_config(make_tiny_config) -> SequentialAttentionConfig:
    return make_tiny_config()


@pytest.fixture
def make_tiny_model() -> Callable[..., Any]:
    """``make_tiny_model(config, seed=0)``: a randomly initialised model in eval mode; the seed fixes its weights."""

    def make(config: SequentialAttentionConfig, seed: int = 0):
        return build_model(config, seed)

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A checkpoint directory of a random tiny model, written once per session (read-only for tests)."""
    config = SequentialAttentionConfig(**TINY_DIMS)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    build_model(config, seed=0).save_pretrained(path)
    return str(path)
