"""The trainer: loss goes down, exact resume, atomic checkpoints, DDP with gloo, the transformer baseline."""

from __future__ import annotations

import hashlib
import os
import socket

import pytest
import torch

from seqedge.model import SequentialAttentionModel
from seqedge.training import checkpointing
from seqedge.training.data import TextDataset
from seqedge.training.trainer import SequentialTrainer, TrainingArguments
from seqedge.training.transformer import TransformerConfig, TransformerModel


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def text_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for i in range(12):
        (root / f"m{i}.py").write_text("def f(x):\n    return x + 1\n\n" * (10 + i) + f"# {i}\n")
    return TextDataset.from_source(root, val_fraction=0.2)


def _args(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path / "run"), steps=6, batch_size=4, seq_len=32, warmup_steps=2, lr=1e-2,
                eval_tokens=256, eval_batch_size=4, progress=False, log_every=1, device="cpu")
    return TrainingArguments(**{**base, **kw})


def _model(config, seed=0):
    torch.manual_seed(seed)
    return SequentialAttentionModel(config)


def test_a_few_steps_lower_the_loss(tmp_path, tiny_config, text_data):
    trainer = SequentialTrainer(_model(tiny_config), _args(tmp_path, steps=12), text_data)
    before = trainer.evaluate()["loss"]
    result = trainer.train()
    assert result["loss"] < before - 0.5
    losses = [h["loss"] for h in trainer.history]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("accum", [1, 2])
def test_resume_is_exact(tmp_path, tiny_config, text_data, accum):
    kw = dict(steps=6, grad_accum=accum, seq_len_schedule=((0, 16), (3, 32)))
    straight = SequentialTrainer(_model(tiny_config), _args(tmp_path / "a", **kw), text_data)
    straight.train()

    first = SequentialTrainer(_model(tiny_config), _args(tmp_path / "b", **kw), text_data)
    for _ in range(3):
        first.train_step()
    first.save()
    resumed = SequentialTrainer(_model(tiny_config, seed=99), _args(tmp_path / "b", **kw), text_data)
    assert resumed.resume() and resumed.step == 3
    resumed.train()
    a = {h["step"]: h["loss"] for h in straight.history}
    b = {h["step"]: h["loss"] for h in resumed.history}
    assert sorted(b) == [4, 5, 6] and all(a[s] == b[s] for s in b)              # bit-exact on CPU
    for (name, p), q in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), name


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, tiny_config, text_data, monkeypatch):
    trainer = SequentialTrainer(_model(tiny_config), _args(tmp_path), text_data)
    trainer.train_step()
    good = trainer.save()
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_step()

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(checkpointing, "rng_tensors", boom)                     # fails after weights are written
    with pytest.raises(OSError, match="simulated"):
        trainer.save()
    root = tmp_path / "run" / "checkpoints"
    assert checkpointing.latest_checkpoint(root) == good
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".latest")) == ["latest", good.name]
    fresh = SequentialTrainer(_model(tiny_config, seed=5), _args(tmp_path), text_data)
    assert fresh.resume() and fresh.step == 1
    for k, v in fresh.model.state_dict().items():
        assert torch.equal(v, weights[k]), k


def test_resume_refuses_other_batch_geometry(tmp_path, tiny_config, text_data):
    trainer = SequentialTrainer(_model(tiny_config), _args(tmp_path), text_data)
    trainer.train_step()
    trainer.save()
    other = SequentialTrainer(_model(tiny_config), _args(tmp_path, batch_size=2), text_data)
    with pytest.raises(ValueError, match="batch_size=4"):
        other.resume()


def test_arguments_are_validated(tmp_path):
    with pytest.raises(ValueError, match="steps"):
        _args(tmp_path, steps=0)
    with pytest.raises(ValueError, match="seq_len_schedule"):
        _args(tmp_path, seq_len_schedule=((5, 16),))
    a = _args(tmp_path, steps=100, warmup_steps=10, seq_len_schedule=((0, 16), (50, 32)))
    assert a.lr_at(0) == pytest.approx(1e-3) and a.lr_at(9) == pytest.approx(1e-2)
    assert a.lr_at(99) == pytest.approx(1e-3, rel=1e-2)
    assert (a.seq_len_at(49), a.seq_len_at(50)) == (16, 32)


def _ddp_worker(rank, world, port, out_dir, corpus_dir, config, queue):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        data = TextDataset.from_source(corpus_dir, val_fraction=0.2)
        torch.manual_seed(0)
        model = SequentialAttentionModel(config)
        start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        args = TrainingArguments(out_dir=out_dir, steps=2, batch_size=2, seq_len=16, warmup_steps=1,
                                 eval_tokens=64, eval_batch_size=2, progress=False, device="cpu")
        trainer = SequentialTrainer(model, args, data)
        trainer.train()
        flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        # a digest: a shared-memory tensor would die with this process, and a large pickle would block its exit
        digest = hashlib.sha256(flat.numpy().tobytes()).hexdigest()
        queue.put((rank, type(trainer.head).__name__, digest, bool((flat != start).any())))
    finally:
        dist.destroy_process_group()


def test_ddp_with_gloo_on_two_processes(tmp_path, tiny_config, text_data):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available in this torch build")
    corpus_dir = str(tmp_path / "corpus")
    os.makedirs(corpus_dir)
    for i in range(6):
        with open(os.path.join(corpus_dir, f"f{i}.py"), "w") as f:
            f.write("import os\nprint(os.getcwd())\n" * (5 + i))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(_ddp_worker, args=(2, port, str(tmp_path / "run"), corpus_dir, tiny_config, queue),
                       nprocs=2, join=True, start_method="spawn")
    results = sorted(queue.get(timeout=60) for _ in range(2))
    assert [r[1] for r in results] == ["DistributedDataParallel"] * 2
    assert results[0][2] == results[1][2]                                        # gradients were all-reduced
    assert results[0][3]                                                         # and the weights moved
    assert checkpointing.latest_checkpoint(tmp_path / "run" / "checkpoints") is not None


def test_transformer_matches_parameters_and_its_cache_step(tiny_config, text_data, tmp_path):
    from seqedge.config import SequentialAttentionConfig

    for cfg in (SequentialAttentionConfig.preset("tiny"), tiny_config):
        sa = SequentialAttentionModel(cfg).num_parameters()
        tr = TransformerModel(TransformerConfig.matching(cfg)).num_parameters()
        assert abs(tr / sa - 1) <= 0.05, (cfg, sa, tr)
    torch.manual_seed(0)
    model = TransformerModel(TransformerConfig.matching(tiny_config, max_seq_len=64)).double().eval()
    tokens = torch.randint(0, 259, (2, 20))
    full = model(tokens)
    k, v = model.init_cache(2, max_len=24)
    k, v = k.double().fill_(float("nan")), v.double().fill_(float("nan"))      # unwritten slots must not leak
    k, v = torch.nan_to_num(k, nan=1e6), torch.nan_to_num(v, nan=1e6)
    steps = []
    for i in range(20):
        logits, k, v = model.step(tokens[:, i], k, v, torch.tensor(i))
        steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-5, atol=1e-5)
    trainer = SequentialTrainer(TransformerModel(TransformerConfig.matching(tiny_config, 64)),
                                _args(tmp_path, steps=3), text_data)
    trainer.train()
    again = TransformerModel.load_pretrained(tmp_path / "run" / "model")
    for a, b in zip(again.state_dict().values(), trainer.model.state_dict().values()):
        assert torch.equal(a, b)
