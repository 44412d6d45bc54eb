"""Byte-level tokenizer: ids 0-255 are bytes, then BOS, EOS and PAD. No download, lossless on any bytes."""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Iterable

BOS_ID, EOS_ID, PAD_ID = 256, 257, 258
NUM_SPECIALS = 3


@dataclass(frozen=True)
class ByteTokenizer:
    """Maps UTF-8 text (or raw bytes) to ids and back; specials are never produced by encoding text."""

    bos_id: int = BOS_ID
    eos_id: int = EOS_ID
    pad_id: int = PAD_ID

    @property
    def vocab_size(self) -> int:
        return 256 + NUM_SPECIALS

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
