"""Text data: deterministic split by file without overlap, reproducible batches, stdlib corpus listing."""

from __future__ import annotations

import pytest
import torch

from seqedge.tokenizer import EOS_ID
from seqedge.training.data import TextDataset, is_validation, list_corpus_files, split_files


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def corpus(tmp_path):
    for i in range(40):
        sub = tmp_path / f"pkg{i % 3}"
        sub.mkdir(exist_ok=True)
        (sub / f"mod{i}.py").write_text(f"# file {i}\n" + f"x_{i} = {i}\n" * (20 + i))
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    return tmp_path


def test_split_is_deterministic_disjoint_and_complete(corpus):
    root, files = list_corpus_files(corpus)
    assert all(p.suffix == ".py" for p in files) and len(files) == 40
    train, val = split_files(root, files, 0.25)
    train2, val2 = split_files(root, list(reversed(files)), 0.25)
    assert sorted(train) == sorted(train2) and sorted(val) == sorted(val2)       # independent of order
    assert not set(train) & set(val) and len(train) + len(val) == len(files)
    assert 0 < len(val) < len(files)
    data = TextDataset.from_source(corpus, val_fraction=0.25)
    assert not set(data.train_files) & set(data.val_files)
    assert len(data.train) == sum(p.stat().st_size + 1 for p in train)          # each file + EOS, read once
    assert int((data.val.tokens == EOS_ID).sum()) == len(val)


def test_split_rule_depends_only_on_relative_path():
    assert is_validation("a/b.py", 0.5) == is_validation("a/b.py", 0.5)
    assert not is_validation("a/b.py", 1e-12)
    share = sum(is_validation(f"f{i}.py", 0.1) for i in range(2000)) / 2000
    assert 0.07 < share < 0.13


def test_batches_are_pure_functions_of_seed_and_index(corpus):
    a = TextDataset.from_source(corpus, seed=3)
    b = TextDataset.from_source(corpus, seed=3)
    x1, y1 = a.train_batch(5, 4, 32)
    x2, y2 = b.train_batch(5, 4, 32)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (4, 32) and x1.dtype == torch.int64
    assert torch.equal(x1[:, 1:], y1[:, :-1])                                  # labels are the next tokens
    assert not torch.equal(a.train_batch(6, 4, 32)[0], x1)
    assert not torch.equal(TextDataset.from_source(corpus, seed=4).train_batch(5, 4, 32)[0], x1)


def test_eval_batches_are_consecutive_windows(corpus):
    data = TextDataset.from_source(corpus, val_fraction=0.25)
    batches = list(data.eval_batches(2, 16, 16 * 5))
    xs = torch.cat([x for x, _ in batches])
    assert xs.shape == (5, 16)
    assert torch.equal(xs.flatten(), data.val.tokens[:80].long())


def test_single_file_and_missing_source(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("hello world " * 100)
    data = TextDataset.from_source(f, val_fraction=0.1)
    assert len(data.train) + len(data.val) == 1201
    with pytest.raises(FileNotFoundError, match="neither 'stdlib' nor"):
        TextDataset.from_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no text files"):
        TextDataset.from_source(tmp_path / "empty")


def test_stdlib_corpus_lists_python_files():
    root, files = list_corpus_files("stdlib")
    assert len(files) > 200 and all(p.suffix == ".py" for p in files)
    assert not any("site-packages" in p.relative_to(root).parts for p in files)
    train, val = split_files(root, files, 0.05)
    assert val and not set(train) & set(val)
