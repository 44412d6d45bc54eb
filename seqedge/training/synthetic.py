"""Seeded synthetic recall tasks: multi-query associative recall (MQAR) and passkey retrieval.

Both return ``(inputs, labels)`` int64 ``[B, T]`` with ``labels == IGNORE_INDEX`` everywhere except where the
answer must be produced; batch ``i`` is a pure function of ``(seed, i)`` so training on them resumes exactly.

MQAR follows Zoology (Arora et al., 2023): vocabulary V (8,192), keys drawn without replacement from
``[1, V/2)`` and values from ``[V/2, V)``; the sequence opens with N key-value pairs ``k1 v1 ... kN vN``, then
every key is queried once, at a slot drawn without replacement with power-law probability ``p(gap) ~ gap^(a-1)``
(a = 0.01: most queries come soon, some late); the slot after each query holds its value. Every other token is
uniform noise over the vocabulary. Only the position of each query is labelled (with its value), so only the
values after queries are scored.

Passkey retrieval (Mohtashami & Jaggi, 2023): byte tokens; repeated filler sentences with
``The pass key is 12345. Remember it. 12345 is the pass key.`` hidden at a random sentence boundary, and the text
ends with ``What is the pass key? The pass key is 12345``; only the digits of that final answer are labelled.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from ..tokenizer import BOS_ID
from .data import IGNORE_INDEX


def _generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


# MQAR ---------------------------------------------------------------------------------------------------------

def mqar_batch(gen: torch.Generator, batch_size: int, seq_len: int, num_pairs: int, vocab_size: int = 8192,
               power_a: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """One MQAR batch: inputs and labels ``[batch_size, seq_len]`` int64 (labels IGNORE_INDEX but at queries)."""
    context = 2 * num_pairs
    if num_pairs < 1 or seq_len < 2 * context:
        raise ValueError(f"MQAR needs num_pairs >= 1 and seq_len >= 4 * num_pairs (pairs, then a slot pair per "
                         f"query), got seq_len {seq_len}, num_pairs {num_pairs}")
    half = vocab_size // 2
    if half - 1 < num_pairs:
        raise ValueError(f"vocab_size {vocab_size} holds fewer than {num_pairs} distinct keys")
    B = batch_size
    keys = torch.rand(B, half - 1, generator=gen).argsort(dim=1)[:, :num_pairs] + 1              # [B, N] in [1, V/2)
    values = torch.rand(B, vocab_size - half, generator=gen).argsort(dim=1)[:, :num_pairs] + half  # [B, N]
    kvs = torch.stack([keys, values], dim=-1).reshape(B, context)                                  # k1 v1 k2 v2 ...

    space = (seq_len - context) // 2                                     # query slots (each: key, then value)
    p = power_a * torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)
    gaps = torch.multinomial((p / p.sum()).expand(B, space), num_pairs, replacement=False, generator=gen)
    queries = torch.zeros(B, seq_len - context + 1, dtype=torch.long)
    queries.scatter_(1, 2 * gaps, keys)
    queries.scatter_(1, 2 * gaps + 1, values)
    examples = torch.cat([kvs, queries], dim=1)                          # [B, seq_len + 1]
    labels = torch.full_like(examples, IGNORE_INDEX)
    labels.scatter_(1, 2 * gaps + context + 1, values)
    inputs, labels = examples[:, :-1].clone(), labels[:, 1:].clone()
    noise = torch.randint(0, vocab_size, inputs.shape, generator=gen)
    inputs = torch.where(inputs == 0, noise, inputs)
    return inputs, labels


class MQARTask:
    """MQAR for the trainer: batch ``i`` uses ``pairs[i % len(pairs)]`` among those that fit the sequence length.

    Evaluation (metric ``accuracy``) is a fixed set drawn from ``eval_seed`` at the trainer's sequence length with
    the largest number of pairs that fits.
    """

    metric = "accuracy"

    def __init__(self, pairs: Sequence[int] = (4, 8, 16, 32, 64), vocab_size: int = 8192, power_a: float = 0.01,
                 seed: int = 0, eval_seed: int = 10_000, eval_examples: int = 256) -> None:
        if not pairs or min(pairs) < 1:
            raise ValueError(f"pairs must be a non-empty list of positive counts, got {pairs!r}")
        self.pairs, self.vocab_size, self.power_a = tuple(sorted(pairs)), vocab_size, power_a
        self.seed, self.eval_seed, self.eval_examples = seed, eval_seed, eval_examples

    def _fitting(self, seq_len: int) -> tuple[int, ...]:
        fit = tuple(n for n in self.pairs if 4 * n <= seq_len)
        if not fit:
            raise ValueError(f"no pair count in {self.pairs} fits seq_len {seq_len} (needs seq_len >= 4 * pairs)")
        return fit

    def train_batch(self, index: int, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        fit = self._fitting(seq_len)
        return mqar_batch(_generator(self.seed, index), batch_size, seq_len, fit[index % len(fit)],
                          self.vocab_size, self.power_a)

    def eval_batches(self, batch_size: int, seq_len: int, max_tokens: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        return self.eval_set(batch_size, seq_len, self._fitting(seq_len)[-1])

    def eval_set(self, batch_size: int, seq_len: int, num_pairs: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """The fixed evaluation examples for one (seq_len, num_pairs) cell, in batches."""
        for i, first in enumerate(range(0, self.eval_examples, batch_size)):
            n = min(batch_size, self.eval_examples - first)
            yield mqar_batch(_generator(self.eval_seed + seq_len * 1000 + num_pairs, i), n, seq_len, num_pairs,
                             self.vocab_size, self.power_a)


# passkey ------------------------------------------------------------------------------------------------------

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
SENTENCES = [s + "." for s in FILLER.strip().rstrip(".").split(". ")]
QUESTION = "What is the pass key? The pass key is "
PASSKEY_DIGITS = 5


def passkey_example(gen: torch.Generator, seq_len: int) -> tuple[list[int], list[int]]:
    """One example of exactly ``seq_len`` tokens: (inputs, labels) lists; the 5 answer digits are labelled."""
    key = "".join(str(int(d)) for d in torch.randint(0, 10, (PASSKEY_DIGITS,), generator=gen))
    needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
    tail = QUESTION + key
    room = seq_len + 1 - 1 - len(needle) - len(tail)                     # +1: labels shift; -1: BOS
    if room < 0:
        raise ValueError(f"passkey needs seq_len >= {len(needle) + len(tail)}, got {seq_len}")
    filler = (FILLER * (room // len(FILLER) + 1))[:room]
    boundaries = [0] + [i + 2 for i in range(len(filler) - 1) if filler[i:i + 2] == ". "]
    position = boundaries[int(torch.randint(0, len(boundaries), (1,), generator=gen))]
    body = (filler[:position] + needle + filler[position:]).encode("ascii")
    ids = [BOS_ID] + list(body) + list(tail.encode("ascii"))
    assert len(ids) == seq_len + 1, (len(ids), seq_len)
    labels = [IGNORE_INDEX] * seq_len
    for j in range(PASSKEY_DIGITS):
        labels[seq_len - PASSKEY_DIGITS + j] = ids[seq_len - PASSKEY_DIGITS + j + 1]
    return ids[:-1], labels


def passkey_batch(gen: torch.Generator, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [passkey_example(gen, seq_len) for _ in range(batch_size)]
    return torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


class PasskeyTask:
    """Passkey retrieval for the trainer; metric ``exact_match``: an example is right when all 5 digits are."""

    metric = "exact_match"

    def __init__(self, seed: int = 0, eval_seed: int = 20_000, eval_examples: int = 64) -> None:
        self.seed, self.eval_seed, self.eval_examples = seed, eval_seed, eval_examples

    def train_batch(self, index: int, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        return passkey_batch(_generator(self.seed, index), batch_size, seq_len)

    def eval_batches(self, batch_size: int, seq_len: int, max_tokens: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        for i, first in enumerate(range(0, self.eval_examples, batch_size)):
            n = min(batch_size, self.eval_examples - first)
            yield passkey_batch(_generator(self.eval_seed + seq_len, i), n, seq_len)
