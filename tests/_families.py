"""Helpers shared by the family-import tests (tests/test_import_*.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seqedge.cli.main import main


def rel_error(got, want) -> float:
    """max |got - want| / max |want| in float64; the shapes must agree and ``got`` be finite."""
    got, want = torch.as_tensor(np.asarray(got)).double(), torch.as_tensor(np.asarray(want)).double()
    assert got.shape == want.shape and torch.isfinite(got).all()
    return float((got - want).abs().max() / want.abs().max())


def edited_hf_dir(path: Path, tmp_path: Path, **changes) -> Path:
    """A copy of the HF dir ``path`` with config.json keys changed (weights linked, not copied)."""
    edited = tmp_path / "edited"
    edited.mkdir()
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (edited / "config.json").write_text(json.dumps(config))
    for f in path.glob("*.safetensors"):
        (edited / f.name).symlink_to(f)
    return edited


def assert_import_refused(path: Path, tmp_path: Path, capsys, key: str, **changes) -> str:
    """``seqedge import`` of a copy of the HF dir ``path`` with config.json ``changes`` exits 2 with one line
    naming ``key`` and writes nothing; returns that line."""
    edited = edited_hf_dir(path, tmp_path, **changes)
    out = tmp_path / "ck"
    capsys.readouterr()                   # drop what fixtures printed (save_pretrained's progress bars)
    assert main(["import", str(edited), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err, err
    assert not out.exists()
    return err


def split_run(model, tokens):
    """seqedge's logits over ``tokens`` ``[B, T >= 45]`` fed as two chunked calls (20, 25 tokens) and then steps:
    the state carried across every kind of call; returns the logits and the final state."""
    with torch.no_grad():
        logits, state = model(tokens[:, :20])
        parts = [logits]
        more, state = model(tokens[:, 20:45], state)
        parts.append(more)
        for t in range(45, tokens.shape[1]):
            step, state = model.step(tokens[:, t], state)
            parts.append(step[:, None])
    return torch.cat(parts, dim=1), state


def stepped_logits(session, tokens) -> np.ndarray:
    """The logits ``[T, V]`` of a Session stepping one sequence (tokens ``[1, T]``) from a zero state."""
    state, got = session.init_state(1), []
    for t in range(tokens.shape[1]):
        logits, state = session.step(np.asarray(tokens[:, t]), state)
        got.append(np.asarray(logits)[0])
    return np.stack(got)


def successor_stream(vocab: int, batch: int, length: int, seed: int, follow: float = 0.9) -> torch.Tensor:
    """Tokens ``[batch, length]`` of a low-entropy language: each token is followed by its successor (one fixed
    permutation of the vocabulary) with probability ``follow``, by a uniform token otherwise."""
    successor = torch.randperm(vocab, generator=torch.Generator().manual_seed(1234))
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.empty(batch, length, dtype=torch.long)
    tokens[:, 0] = torch.randint(vocab, (batch,), generator=gen)
    for t in range(1, length):
        follows = torch.rand(batch, generator=gen) < follow
        tokens[:, t] = torch.where(follows, successor[tokens[:, t - 1]], torch.randint(vocab, (batch,), generator=gen))
    return tokens


def trained_copy(path: Path, steps: int = 300, lr: float = 1e-2, batch: int = 32, length: int = 17):
    """The model imported from ``path``, trained briefly on :func:`successor_stream`.

    A tiny random model's logits are flat, so the top-1 agreement of a quantized export with it measures which
    near-ties the rounding flips, not what quantization does to a model that predicts something; after these steps
    the model predicts the successor with a margin of several logits, as a trained model does where it is confident.
    With half the steps the margins stayed small enough that slight differences in the trained weights (a learning
    rate 10% off, or another CPU's float kernels) moved int4-all's top-1 on the Gated DeltaNet copy between 0.97
    and 1.0."""
    from seqedge.families import import_hf

    torch.manual_seed(0)
    model = import_hf(path).train()
    vocab = model.config.vocab_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(steps):
        tokens = successor_stream(vocab, batch, length, seed=step)
        logits, _ = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


QUANTIZED_RECIPES = {"fp16": "fp16", "int8": "int8-dynamic", "int4": "int4-all"}
# The least top-1 agreement with the float32 model each scheme keeps on a trained copy. int4-all rounds every matrix
# of a 32-wide model to 4 bits (logits off by 15-20% of their norm), so a near-tie flips now and then: 0.98 allows
# five of 256 tokens; a broken packing (wrong zero points, scales or block order) agrees on far fewer.
TOP1_MIN = {"fp16": 0.99, "int8": 0.99, "int4": 0.98}


def quantized_top1(path: Path, tmp_path: Path, schemes=("fp16", "int8", "int4")) -> dict[str, float]:
    """Top-1 agreement over 256 tokens of the onnx step at each of ``schemes`` with float32 logits, on a
    :func:`trained_copy` of the model imported from ``path``: the copy is saved as a checkpoint, exported by the
    CLI (int8 as its ``int8-dynamic`` recipe: 8-bit weights in blocks, int8 activations; int4 as ``int4-all``:
    every matrix in 4-bit groups of 32, the recipe for models without MLP blocks) and stepped from a zero state
    over unseen tokens of the same language."""
    import seqedge

    model = trained_copy(path)
    model.save_pretrained(tmp_path / "trained")
    recipes = ",".join(QUANTIZED_RECIPES[s] for s in schemes)
    artifact = tmp_path / "art"
    assert main(["export", "-m", str(tmp_path / "trained"), "--target", "onnx", "--quantize", recipes,
                 "--out", str(artifact), "--quiet"]) == 0
    tokens = successor_stream(model.config.vocab_size, 1, 256, seed=10_000)
    with torch.no_grad():
        want = model(tokens)[0][0].numpy().argmax(-1)
    return {s: float((stepped_logits(seqedge.load(artifact, "onnxruntime", quantization=s), tokens).argmax(-1)
                      == want).mean()) for s in schemes}


# fla's models run their Triton kernels on CUDA only; on a CPU their checkpoints are checked layer by layer against
# fla's pure-torch functions instead (each family's test file says how)
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="fla's model forward runs Triton kernels, which need a CUDA GPU")
# fla's chunk kernels multiply float32 inputs as TF32 on the card (10-bit mantissas), so its logits carry errors of
# about 1e-3 of their scale against any float32 computation
FLA_GPU_TOL = 5e-3


def fla_gpu_error(source, path: Path, vocab: int) -> float:
    """Relative error (:func:`rel_error`) of the model imported from ``path`` (on the CPU) against fla's own
    ``ForCausalLM`` forward of ``source`` (a copy moved to the GPU; the fixture's model stays on the CPU), logits
    over 2 x 100 seeded tokens."""
    import copy

    from seqedge.families import import_hf

    tokens = torch.randint(0, vocab, (2, 100), generator=torch.Generator().manual_seed(11))
    model = copy.deepcopy(source).cuda().eval()
    with torch.no_grad():
        want = model(tokens.cuda()).logits.float().cpu()
        got = import_hf(path)(tokens)[0]
    return rel_error(got, want)
