"""The config: JSON round trip, presets, and validation errors that name the offending field."""

from __future__ import annotations

import dataclasses
import json

import pytest

from seqedge.config import PRESETS, SequentialAttentionConfig


@pytest.mark.parametrize("config", [
    SequentialAttentionConfig(),
    SequentialAttentionConfig(update_rule="delta", chunk_size=32, g_min=-2.5, tie_embeddings=False, mlp_ratio=3.0),
    *(SequentialAttentionConfig.preset(name) for name in sorted(PRESETS)),
], ids=lambda c: f"{c.hidden_size}-{c.update_rule}")
def test_json_round_trip(config):
    text = config.to_json()
    assert json.loads(text) == config.to_dict()
    assert SequentialAttentionConfig.from_json(text) == config
    assert SequentialAttentionConfig.from_dict(config.to_dict()) == config


def test_preset_overrides_and_unknown_preset():
    config = SequentialAttentionConfig.preset("tiny", update_rule="delta")
    assert config.update_rule == "delta" and config.hidden_size == PRESETS["tiny"]["hidden_size"]
    with pytest.raises(ValueError, match="unknown preset 'huge'.*tiny"):
        SequentialAttentionConfig.preset("huge")


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SequentialAttentionConfig().hidden_size = 7


def test_derived_sizes():
    c = SequentialAttentionConfig(hidden_size=64, num_heads=2, head_k_dim=16, head_v_dim=8, mlp_ratio=2.0,
                                  mlp_multiple_of=48)
    assert (c.key_size, c.value_size, c.conv_channels) == (32, 16, 80)
    assert c.mlp_hidden_size == 144                                              # 128 rounded up to 48s


@pytest.mark.parametrize("overrides, field", [
    (dict(hidden_size=100, num_heads=3), "hidden_size"),
    (dict(hidden_size=100, num_heads=3), "num_heads"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(chunk_size=24), "chunk_size"),
    (dict(chunk_size=-16), "chunk_size"),
    (dict(update_rule="linear"), "update_rule"),
    (dict(g_min=-6.0), "g_min"),
    (dict(g_min=0.0), "g_min"),
    (dict(g_min=0.5), "g_min"),
    (dict(num_layers=0), "num_layers"),
    (dict(head_k_dim=16.0), "head_k_dim"),
    (dict(vocab_size=True), "vocab_size"),
    (dict(conv_kernel=1), "conv_kernel"),
    (dict(mlp_ratio=0.0), "mlp_ratio"),
    (dict(norm_eps=0.0), "norm_eps"),
    (dict(gate_half_life_min=10.0, gate_half_life_max=1.0), "gate_half_life"),
])
def test_invalid_values_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        SequentialAttentionConfig(**overrides)


def test_from_dict_rejects_unknown_fields():
    data = {**SequentialAttentionConfig().to_dict(), "hiden_size": 64}
    with pytest.raises(ValueError, match="hiden_size"):
        SequentialAttentionConfig.from_dict(data)


def test_from_dict_validates_values():
    with pytest.raises(ValueError, match="update_rule"):
        SequentialAttentionConfig.from_dict({"update_rule": "mamba"})
    with pytest.raises(ValueError, match="JSON object"):
        SequentialAttentionConfig.from_dict(["hidden_size", 64])


def test_from_json_rejects_invalid_json():
    with pytest.raises(ValueError, match="not valid JSON"):
        SequentialAttentionConfig.from_json("{hidden_size: 64")


def test_intermediate_size_overrides_the_ratio_and_stays_out_of_native_configs():
    assert SequentialAttentionConfig(hidden_size=192, intermediate_size=100).mlp_hidden_size == 100
    assert "intermediate_size" not in SequentialAttentionConfig().to_dict()
    assert SequentialAttentionConfig(intermediate_size=100).to_dict()["intermediate_size"] == 100
    with pytest.raises(ValueError, match="intermediate_size"):
        SequentialAttentionConfig(intermediate_size=-1)
