"""The bundled default model: tiny preset, gated, at most 10 MB, and it models Python source far below 8 bpb."""

from __future__ import annotations

import math
from pathlib import Path

import torch

import seqedge
from seqedge.config import SequentialAttentionConfig
from seqedge.defaults import DEFAULT_MODEL_DIR
from seqedge.tokenizer import ByteTokenizer


def test_default_model_is_the_tiny_gated_preset_and_small():
    torch.set_num_threads(1)
    model = seqedge.load_default()
    assert model.config == SequentialAttentionConfig.preset("tiny")
    assert model.config.update_rule == "gated"
    size = sum(p.stat().st_size for p in Path(DEFAULT_MODEL_DIR).iterdir())
    assert size <= 10 * 1024 * 1024
    assert (Path(DEFAULT_MODEL_DIR) / "TRAINING.md").is_file()


def test_default_model_predicts_python_source():
    torch.set_num_threads(1)
    model = seqedge.load_default().eval()
    text = Path(seqedge.__file__).with_name("tokenizer.py").read_bytes()[:1024]   # not in its training data
    ids = torch.tensor([list(text)])
    with torch.no_grad():
        logits, _ = model(ids[:, :-1])
    nll = torch.nn.functional.cross_entropy(logits[0], ids[0, 1:])
    bpb = float(nll) / math.log(2)
    assert bpb < 3.0, bpb                                        # a random model scores about 8
    assert ByteTokenizer().decode(model.generate(list(b"import "), 8)) != ""
