"""Hugging Face ``tokenizer.json`` tokenizers, read with the ``tokenizers`` library (no code from the model runs).

A model directory's ``tokenizer.json`` is kept byte for byte: the checkpoint and the artifact carry the same file,
hashed. The special ids come from the model's own files, first found wins (docs/tokenizers.md):

    generation_config.json  eos_token_id / bos_token_id / pad_token_id   (what transformers' generate uses)
    config.json             eos_token_id / bos_token_id / pad_token_id
    tokenizer_config.json   eos_token / bos_token / pad_token            (token strings, looked up in tokenizer.json)

A ``null`` counts as absent. A list of EOS ids (generation_config.json allows one) makes the first the EOS id and
every one a stop id. PAD falls back to EOS. Prompts are framed as ``tokenizer.json``'s post-processor frames them
(``add_special_tokens``, as transformers encodes by default), so a model whose template adds BOS gets exactly one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

TOKENIZER_TYPE = "hf-tokenizers"
TOKENIZER_FILE = "tokenizer.json"
MAX_TOKENIZER_BYTES = 64 << 20       # the largest published tokenizer.json files are ~35 MB
INSTALL_HINT = "pip install tokenizers==0.23.3 (or pip install 'seqedge[import]')"
SPECIALS = ("bos", "eos", "pad")


class TokenizerError(ValueError):
    """A tokenizer file or its special ids cannot be used with this model (one line)."""


def _tokenizers():
    try:
        import tokenizers
    except ImportError as err:
        raise ImportError(f"this model's tokenizer is a tokenizer.json, which needs the tokenizers library "
                          f"({err}); run: {INSTALL_HINT}") from None
    return tokenizers


def parse_tokenizer(data: bytes) -> Any:
    """A ``tokenizers.Tokenizer`` from the bytes of a ``tokenizer.json``; TokenizerError when it is not one."""
    if len(data) > MAX_TOKENIZER_BYTES:
        raise TokenizerError(f"{TOKENIZER_FILE} has {len(data)} bytes, more than the {MAX_TOKENIZER_BYTES} "
                             "seqedge reads")
    tokenizers = _tokenizers()
    try:
        return tokenizers.Tokenizer.from_str(data.decode("utf-8"))
    except Exception as err:                    # the library raises a bare Exception on a malformed file
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TokenizerError(f"{TOKENIZER_FILE} is not a tokenizer the tokenizers library reads: {first}") from None


@dataclass(frozen=True)
class HFTokenizer:
    """A ``tokenizer.json`` and the model's special ids; the same interface as :class:`ByteTokenizer`."""

    data: bytes = field(repr=False)
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    stop_ids: tuple[int, ...] = ()
    backend: Any = field(default=None, repr=False, compare=False)     # parsed from ``data`` when not given

    def __post_init__(self) -> None:
        if self.backend is None:
            object.__setattr__(self, "backend", parse_tokenizer(self.data))
        if not self.stop_ids and self.eos_id is not None:
            object.__setattr__(self, "stop_ids", (self.eos_id,))

    @property
    def vocab_size(self) -> int:
        """Ids the tokenizer can produce (added tokens included)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Text -> ids; ``add_bos`` applies the tokenizer's own framing (its post-processor), ``add_eos`` appends
        the EOS id."""
        ids = list(self.backend.encode(text, add_special_tokens=add_bos).ids)
        return ids + ([self.eos_id] if add_eos and self.eos_id is not None else [])

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text, special tokens dropped."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=True)

    def stream_decoder(self) -> "HFStreamDecoder":
        return HFStreamDecoder(self.backend)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's and the checkpoint's ``tokenizer`` record, without the file record."""
        return {"type": TOKENIZER_TYPE, "bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id,
                "stop_ids": list(self.stop_ids), "vocab_size": self.vocab_size}

    @classmethod
    def from_record(cls, record: dict[str, Any], data: bytes) -> "HFTokenizer":
        return cls(data, record.get("bos_id"), record.get("eos_id"), record.get("pad_id"),
                   tuple(record.get("stop_ids") or ()))

    def check_fits(self, vocab_size: int, where: str) -> None:
        """TokenizerError unless every id the tokenizer produces or stops on lies in the model's vocabulary."""
        if self.vocab_size > vocab_size:
            raise TokenizerError(f"{where}: the tokenizer has {self.vocab_size} tokens, more than the model's "
                                 f"vocab_size {vocab_size}; the tokenizer.json does not belong to this model")
        for name, value in (("bos", self.bos_id), ("eos", self.eos_id), ("pad", self.pad_id),
                            *(("stop", s) for s in self.stop_ids)):
            if value is not None and not 0 <= value < vocab_size:
                raise TokenizerError(f"{where}: the {name} token id {value} is outside the model's vocabulary "
                                     f"[0, {vocab_size})")


class HFStreamDecoder:
    """Incremental decoding: text is emitted once the tokens so far decode to complete characters.

    Each push decodes only the window since the last emitted text (the usual prefix/read offsets), so a token
    that merges with the one before it (byte-level pieces of one character, a word-piece continuation) is shown
    once it is whole; :meth:`flush` emits what is left, incomplete bytes as U+FFFD like :meth:`HFTokenizer.decode`.
    """

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self._ids: list[int] = []
        self._prefix = self._read = 0

    def _text(self, end: int) -> str:
        return self._backend.decode(self._ids[self._prefix:end], skip_special_tokens=True)

    def push(self, token: int) -> str:
        self._ids.append(int(token))
        before, now = self._text(self._read), self._text(len(self._ids))
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return now[len(before):]

    def flush(self) -> str:
        before, now = self._text(self._read), self._text(len(self._ids))
        self._prefix = self._read = len(self._ids)
        return now[len(before):]


# reading a Hugging Face model directory ------------------------------------------------------------------
def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TokenizerError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} must hold a JSON object")
    return data


def _ids(value: Any, where: str) -> list[int] | None:
    """An id or a list of ids from a config file; None when absent or null."""
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise TokenizerError(f"{where} must be a token id or a list of token ids, got {value!r}")
    return values


def _token_id(value: Any, backend: Any, where: str) -> list[int] | None:
    """A tokenizer_config.json special token (a string, or an AddedToken dict) looked up in tokenizer.json."""
    if isinstance(value, dict):
        value = value.get("content")
    if value is None:
        return None
    if not isinstance(value, str):
        raise TokenizerError(f"{where} must be a token string, got {value!r}")
    found = backend.token_to_id(value)
    if found is None:
        raise TokenizerError(f"{where} is {value!r}, which is not in tokenizer.json's vocabulary")
    return [found]


def special_ids(directory: Path, backend: Any) -> dict[str, list[int] | None]:
    """``{"bos": ids, "eos": ids, "pad": ids}`` by the precedence of this module's docstring."""
    generation = _json(directory / "generation_config.json")
    config = _json(directory / "config.json")
    tokenizer_config = _json(directory / "tokenizer_config.json")
    found: dict[str, list[int] | None] = {}
    for name in SPECIALS:
        key = f"{name}_token_id"
        found[name] = (_ids(generation.get(key), f"generation_config.json {key}")
                       or _ids(config.get(key), f"config.json {key}")
                       or _token_id(tokenizer_config.get(f"{name}_token"), backend,
                                    f"tokenizer_config.json {name}_token"))
    found["pad"] = found["pad"] or found["eos"]
    return found


# tokenizer files of other formats: a directory with one of them and no tokenizer.json is refused, not imported
# with the byte tokenizer
OTHER_TOKENIZER_FILES = ("tokenizer.model", "vocab.json", "merges.txt", "spiece.model", "vocab.txt")


def read_hf_tokenizer(directory: str | Path, vocab_size: int) -> HFTokenizer | None:
    """The ``tokenizer.json`` of a Hugging Face model directory with its special ids, checked against the
    model's ``vocab_size``; None when the directory has no ``tokenizer.json``."""
    directory = Path(directory)
    path = directory / TOKENIZER_FILE
    if not path.is_file():
        others = sorted(f for f in OTHER_TOKENIZER_FILES if (directory / f).is_file())
        if others:      # the model has a tokenizer seqedge cannot read: the byte tokenizer would be garbage
            raise TokenizerError(f"{directory} has a tokenizer in {', '.join(others)} but no {TOKENIZER_FILE}, the "
                                 f"only format seqedge reads; write one with transformers: AutoTokenizer."
                                 f"from_pretrained(DIR).save_pretrained(DIR)")
        return None
    size = path.stat().st_size
    if size > MAX_TOKENIZER_BYTES:
        raise TokenizerError(f"{path} has {size} bytes, more than the {MAX_TOKENIZER_BYTES} seqedge reads")
    data = path.read_bytes()
    backend = parse_tokenizer(data)
    ids = special_ids(directory, backend)
    first = {name: (ids[name][0] if ids[name] else None) for name in SPECIALS}
    tokenizer = HFTokenizer(data, first["bos"], first["eos"], first["pad"], tuple(ids["eos"] or ()), backend)
    tokenizer.check_fits(vocab_size, str(directory))
    return tokenizer
