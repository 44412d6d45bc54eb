"""MQAR and passkey generators: labels exactly where the answer is, reproducible from the seed."""

from __future__ import annotations

import torch

from seqedge.tokenizer import ByteTokenizer
from seqedge.training.data import IGNORE_INDEX
from seqedge.training.synthetic import MQARTask, PasskeyTask, mqar_batch, passkey_batch


def test_mqar_labels_only_at_queries_with_their_values():
    V, N, T = 8192, 8, 64
    x, y = mqar_batch(torch.Generator().manual_seed(0), 16, T, N, V)
    assert x.shape == y.shape == (16, T)
    for row_x, row_y in zip(x, y):
        keys, values = row_x[0:2 * N:2], row_x[1:2 * N:2]
        assert bool((keys >= 1).all() and (keys < V // 2).all()) and len(set(keys.tolist())) == N
        assert bool((values >= V // 2).all() and (values < V).all()) and len(set(values.tolist())) == N
        pos = (row_y != IGNORE_INDEX).nonzero().flatten()
        assert len(pos) == N and bool((pos >= 2 * N).all())                     # one label per key, after the pairs
        table = dict(zip(keys.tolist(), values.tolist()))
        for p in pos.tolist():
            assert table[int(row_x[p])] == int(row_y[p])                          # the query is a key, label its value
            if p + 1 < T:
                assert int(row_x[p + 1]) == int(row_y[p])                         # and the value follows it
        assert sorted(int(row_x[p]) for p in pos) == sorted(keys.tolist())       # every key queried once


def test_mqar_seeded_and_task_mixture():
    a = mqar_batch(torch.Generator().manual_seed(1), 4, 128, 16)
    b = mqar_batch(torch.Generator().manual_seed(1), 4, 128, 16)
    c = mqar_batch(torch.Generator().manual_seed(2), 4, 128, 16)
    assert all(torch.equal(u, v) for u, v in zip(a, b)) and not torch.equal(a[0], c[0])
    task = MQARTask(pairs=(4, 8, 64))
    counts = [int((task.train_batch(i, 2, 64)[1] != IGNORE_INDEX).sum()) // 2 for i in range(4)]
    assert counts == [4, 8, 4, 8]                                                # 64 pairs do not fit 64 tokens
    assert torch.equal(task.train_batch(3, 2, 64)[0], task.train_batch(3, 2, 64)[0])


def test_passkey_labels_are_the_hidden_digits():
    tok = ByteTokenizer()
    x, y = passkey_batch(torch.Generator().manual_seed(0), 8, 300)
    assert x.shape == y.shape == (8, 300)
    for row_x, row_y in zip(x, y):
        pos = (row_y != IGNORE_INDEX).nonzero().flatten().tolist()
        assert pos == list(range(295, 300))
        answer = tok.decode(row_y[pos].tolist())
        text = tok.decode(row_x.tolist())
        assert answer.isdigit() and f"The pass key is {answer}. Remember it." in text
        assert text.endswith("What is the pass key? The pass key is " + answer[:4])
    task = PasskeyTask(seed=5)
    assert torch.equal(task.train_batch(2, 2, 128)[0], PasskeyTask(seed=5).train_batch(2, 2, 128)[0])
    assert not torch.equal(task.train_batch(2, 2, 128)[0], task.train_batch(3, 2, 128)[0])
