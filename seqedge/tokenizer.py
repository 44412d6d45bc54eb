"""Tokenizers: the :class:`Tokenizer` interface, the byte-level tokenizer (ids 0-255 are bytes, then BOS, EOS
and PAD; no download, lossless on any bytes) and :func:`tokenizer_from_record`, which loads the tokenizer a
checkpoint's or an artifact's ``tokenizer`` record names (the byte one, or a Hugging Face ``tokenizer.json``:
:mod:`seqedge.tokenizer_hf`).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Protocol

BOS_ID, EOS_ID, PAD_ID = 256, 257, 258
NUM_SPECIALS = 3


class StreamingDecoder(Protocol):
    def push(self, token: int) -> str:
        """The text that ``token`` completes (may be empty while a character is incomplete)."""

    def flush(self) -> str:
        """Whatever is still buffered, at the end of a stream."""


class Tokenizer(Protocol):
    """What every tokenizer offers: text <-> ids, the special ids (None where the model has none) and the ids
    generation stops at."""

    bos_id: int | None
    eos_id: int | None
    pad_id: int | None

    @property
    def vocab_size(self) -> int: ...

    @property
    def stop_ids(self) -> tuple[int, ...]: ...

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def stream_decoder(self) -> StreamingDecoder: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ByteTokenizer:
    """Maps UTF-8 text (or raw bytes) to ids and back; specials are never produced by encoding text."""

    bos_id: int = BOS_ID
    eos_id: int = EOS_ID
    pad_id: int = PAD_ID

    @property
    def vocab_size(self) -> int:
        return 256 + NUM_SPECIALS

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return (self.eos_id,)

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Text -> ids (its UTF-8 bytes), optionally framed by BOS/EOS."""
        return self.encode_bytes(text.encode("utf-8"), add_bos=add_bos, add_eos=add_eos)

    def encode_bytes(self, data: bytes, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = list(data)
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids -> bytes, dropping specials; raises ValueError on an id outside the vocabulary."""
        out = bytearray()
        for i in ids:
            i = int(i)
            if 0 <= i < 256:
                out.append(i)
            elif not 256 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
        return bytes(out)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; invalid UTF-8 (a model can emit any byte) becomes U+FFFD instead of failing."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)

    def to_dict(self) -> dict[str, int | str]:
        return {"type": "bytes", "bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id,
                "vocab_size": self.vocab_size}


class StreamDecoder:
    """Incremental decoding for streaming output: a multi-byte character is printed once it is complete."""

    def __init__(self, tokenizer: ByteTokenizer) -> None:
        self._tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self._decoder.decode(self._tokenizer.decode_bytes([token]))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


def tokenizer_from_record(record: Mapping[str, Any] | None,
                          read_file: Callable[[Mapping[str, Any]], bytes]) -> Tokenizer:
    """The tokenizer a ``tokenizer`` record names (none: the byte tokenizer); ``read_file(file_record)`` returns
    the bytes of the record's checked ``file`` (confined, size and sha256 verified by the caller's rules)."""
    from seqedge.tokenizer_hf import TOKENIZER_TYPE, HFTokenizer

    if not record or record.get("type") == "bytes":
        spec = dict(record or ByteTokenizer().to_dict())
        return ByteTokenizer(bos_id=int(spec["bos_id"]), eos_id=int(spec["eos_id"]), pad_id=int(spec["pad_id"]))
    if record.get("type") == TOKENIZER_TYPE:
        return HFTokenizer.from_record(dict(record), read_file(record["file"]))
    raise ValueError(f"tokenizer type {record.get('type')!r} is not one this seqedge loads (it loads 'bytes' and "
                     f"{TOKENIZER_TYPE!r}); re-export the model with this seqedge")
