"""Pretrained models of the family, imported from local Hugging Face directories.

One module per family maps its ``config.json`` onto a :class:`seqedge.config.SequentialAttentionConfig` (the
mixer parts it sets, docs/families.md) and its weight names onto seqedge's; :data:`FAMILIES` maps
``model_type`` to that module. Anything a family cannot represent exactly is refused with one line naming the
config key; nothing is approximated.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING

from . import gated_deltanet, gdn_transformers, gla, kda, mamba2
from .hf_dir import HFModelDir, UnsupportedModelError, is_hf_dir, read_hf_dir

if TYPE_CHECKING:
    from ..model import SequentialAttentionModel

FAMILIES: dict[str, ModuleType] = {model_type: module for module in (mamba2, gated_deltanet, gdn_transformers, kda, gla)
                                   for model_type in module.MODEL_TYPES}

__all__ = ["FAMILIES", "HFModelDir", "UnsupportedModelError", "family_of", "import_hf", "is_hf_dir"]


def family_of(model_type: str) -> ModuleType:
    """The family module for a ``config.json`` ``model_type``; unknown types list the supported ones."""
    if model_type not in FAMILIES:
        raise UnsupportedModelError(f"config.json model_type={model_type!r} is not a family seqedge imports; "
                                    f"supported: {sorted(FAMILIES)}")
    return FAMILIES[model_type]


def import_hf(path: str | os.PathLike) -> "SequentialAttentionModel":
    """A seqedge model with the weights of the Hugging Face directory ``path`` (float32, eval mode) and its
    ``tokenizer.json`` (``model.tokenizer``), refused when the tokenizer does not fit the model's vocabulary."""
    import torch

    from ..model import SequentialAttentionModel

    from ..tokenizer_hf import read_hf_tokenizer

    hf = read_hf_dir(path)
    family = family_of(hf.model_type)
    config = family.config_from_hf(hf.config)
    tokenizer = read_hf_tokenizer(path, config.vocab_size)       # None: no tokenizer.json, the byte tokenizer
    weights, unused = family.state_dict_from_hf(hf, config)
    if unused:
        raise UnsupportedModelError(f"{family.FAMILY}: weights seqedge does not map (an unsupported option?): "
                                    f"{unused[:5]}{' ...' if len(unused) > 5 else ''}")
    with torch.device("meta"):
        expected = SequentialAttentionModel(config).state_dict()
    for name, tensor in weights.items():
        if name not in expected or tuple(tensor.shape) != tuple(expected[name].shape):
            want = tuple(expected[name].shape) if name in expected else "no such weight"
            raise UnsupportedModelError(f"{family.FAMILY}: {name} has shape {tuple(tensor.shape)}, the config "
                                        f"implies {want} (config.json and the weights disagree)")
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise UnsupportedModelError(f"{family.FAMILY}: no source weight for {missing[:5]}")
    model = SequentialAttentionModel(config)
    model.load_state_dict(weights)
    model.tokenizer = tokenizer
    return model.eval()
