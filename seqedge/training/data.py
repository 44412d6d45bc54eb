"""Text datasets: a file, a folder, or ``stdlib`` (the .py files of the running Python's standard library).

A corpus is split into train and validation **by file**, deterministically: a file goes to validation when the
SHA-256 of its path relative to the corpus root falls below ``val_fraction`` (independent of file order, machine
and seed, so adding a file never moves another one). Each split is read once into one contiguous byte array,
files separated by EOS; batches are windows of it, and batch ``i`` is a pure function of ``(seed, i)``, so the
data position of a run is one integer and resuming is exact.

    >>> data = TextDataset.from_source("stdlib")
    >>> inputs, labels = data.train.batch(0, batch_size=8, seq_len=256)      # [8, 256] int64 each
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ..tokenizer import EOS_ID

IGNORE_INDEX = -100
TEXT_SUFFIXES = (".py", ".txt", ".md", ".rst", ".c", ".h", ".json", ".toml", ".cfg", ".ini", ".html", ".js")


def stdlib_root() -> Path:
    """Folder of the running Python's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def list_corpus_files(source: str | Path) -> tuple[Path, list[Path]]:
    """``(root, files)`` for ``stdlib``, a text file or a folder (files sorted by relative path).

    ``stdlib`` is every ``*.py`` under the stdlib folder outside ``site-packages``; a folder is every file with a
    text suffix (:data:`TEXT_SUFFIXES`) under it.
    """
    if str(source) == "stdlib":
        root = stdlib_root()
        files = [p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts]
    else:
        path = Path(source)
        if path.is_file():
            return path.parent, [path]
        if not path.is_dir():
            raise FileNotFoundError(f"data source {str(source)!r} is neither 'stdlib' nor an existing file or "
                                    "folder; pass --data stdlib, a text file or a folder of text files")
        root = path
        files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES]
    files = sorted(files, key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise FileNotFoundError(f"data source {str(source)!r} holds no text files (suffixes {TEXT_SUFFIXES})")
    return root, files


def is_validation(relative_path: str, val_fraction: float) -> bool:
    """The split rule: SHA-256 of the relative path, read as a number in [0, 1), below ``val_fraction``."""
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64 < val_fraction


def split_files(root: Path, files: Sequence[Path], val_fraction: float) -> tuple[list[Path], list[Path]]:
    """``(train, validation)`` file lists; a single file is split by position instead (see :class:`TextDataset`)."""
    train, val = [], []
    for p in files:
        (val if is_validation(p.relative_to(root).as_posix(), val_fraction) else train).append(p)
    return train, val


def _read_bytes(files: Sequence[Path]) -> np.ndarray:
    """Files -> one ``uint16`` token array, each file followed by EOS (ids 0-255 bytes, 257 EOS)."""
    parts = []
    eos = np.array([EOS_ID], dtype=np.uint16)
    for p in files:
        parts += [np.frombuffer(p.read_bytes(), dtype=np.uint8).astype(np.uint16), eos]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


class TokenStream:
    """One split as a contiguous token array; random windows for training, fixed windows for evaluation."""

    def __init__(self, tokens: np.ndarray, seed: int, name: str) -> None:
        self.tokens = torch.from_numpy(tokens.astype(np.int16))   # ids < 259: int16 keeps the corpus small
        self.seed = seed
        self.name = name

    def __len__(self) -> int:
        return int(self.tokens.numel())

    def batch(self, index: int, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number ``index``: ``batch_size`` windows at offsets drawn from ``(seed, index)``.

        Returns inputs and labels ``[batch_size, seq_len]`` int64 (labels = inputs shifted by one token).
        """
        if len(self) < seq_len + 2:
            raise ValueError(f"the {self.name} split has {len(self)} tokens, too few for seq_len {seq_len}; "
                             "use a shorter --seq-len or more data")
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        starts = torch.randint(0, len(self) - seq_len - 1, (batch_size,), generator=gen)
        window = starts[:, None] + torch.arange(seq_len + 1)[None, :]                 # [B, T+1]
        chunk = self.tokens[window].long()
        return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()

    def eval_batches(self, batch_size: int, seq_len: int, max_tokens: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """Consecutive non-overlapping windows from the start, up to ``max_tokens`` predicted tokens."""
        n = min((len(self) - 1) // seq_len, max(1, max_tokens // seq_len))
        if n == 0:
            raise ValueError(f"the {self.name} split has {len(self)} tokens, too few for seq_len {seq_len}")
        for first in range(0, n, batch_size):
            idx = torch.arange(first, min(first + batch_size, n))
            window = idx[:, None] * seq_len + torch.arange(seq_len + 1)[None, :]
            chunk = self.tokens[window].long()
            yield chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()


@dataclass(frozen=True)
class DataConfig:
    """Where text comes from and how it is split."""

    source: str = "stdlib"
    val_fraction: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")


class TextDataset:
    """Train and validation :class:`TokenStream` of one corpus; the metric is bits per byte."""

    metric = "bpb"

    def __init__(self, train: TokenStream, val: TokenStream, train_files: list[str], val_files: list[str]):
        self.train, self.val = train, val
        self.train_files, self.val_files = train_files, val_files

    @classmethod
    def from_source(cls, source: str | Path = "stdlib", val_fraction: float = 0.05, seed: int = 0) -> "TextDataset":
        """Read ``source`` (``stdlib``, a file or a folder) once, split by file.

        A single file, or a folder whose split would leave one side empty, is split by position instead: the
        last ``val_fraction`` of the bytes is validation.
        """
        config = DataConfig(str(source), val_fraction, seed)
        root, files = list_corpus_files(source)
        train_f, val_f = split_files(root, files, config.val_fraction)
        if train_f and val_f:
            train, val = _read_bytes(train_f), _read_bytes(val_f)
        else:
            train_f, val_f = list(files), list(files)
            everything = _read_bytes(files)
            cut = int(len(everything) * (1 - config.val_fraction))
            train, val = everything[:cut], everything[cut:]
        rel = [p.relative_to(root).as_posix() for p in train_f], [p.relative_to(root).as_posix() for p in val_f]
        return cls(TokenStream(train, seed, "train"), TokenStream(val, seed, "validation"), *rel)

    def train_batch(self, index: int, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.train.batch(index, batch_size, seq_len)

    def eval_batches(self, batch_size: int, seq_len: int, max_tokens: int) -> Iterator[tuple[torch.Tensor, ...]]:
        return self.val.eval_batches(batch_size, seq_len, max_tokens)

    def describe(self) -> dict:
        return {"train_tokens": len(self.train), "val_tokens": len(self.val), "train_files": len(self.train_files),
                "val_files": len(self.val_files)}
