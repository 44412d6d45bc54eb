"""Text in and out of the server: the tokenizer interface, the chat template for byte models, stop strings.

The server needs only :class:`TextTokenizer` from a tokenizer, so any tokenizer with ``encode``, a streaming
decoder and BOS/EOS ids plugs in; :data:`TOKENIZERS` maps the ``tokenizer.type`` an artifact's manifest records
to a loader.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, Sequence

from seqedge.tokenizer import ByteTokenizer


class StreamingDecoder(Protocol):
    def push(self, token: int) -> str:
        """The text that ``token`` completes (may be empty while a multi-byte character is incomplete)."""

    def flush(self) -> str:
        """Whatever is still buffered, at the end of a stream."""


class TextTokenizer(Protocol):
    bos_id: int
    eos_id: int

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]: ...

    def stream_decoder(self) -> StreamingDecoder: ...


def _byte_tokenizer(spec: Mapping[str, Any]) -> TextTokenizer:
    return ByteTokenizer(bos_id=int(spec["bos_id"]), eos_id=int(spec["eos_id"]), pad_id=int(spec["pad_id"]))


# manifest ``tokenizer.type`` -> loader of that tokenizer from the manifest's ``tokenizer`` record
TOKENIZERS: dict[str, Callable[[Mapping[str, Any]], TextTokenizer]] = {"bytes": _byte_tokenizer}


def tokenizer_from_manifest(manifest_data: Mapping[str, Any]) -> TextTokenizer:
    """The tokenizer an artifact's manifest names; a byte tokenizer when the manifest names none."""
    spec = manifest_data.get("tokenizer") or ByteTokenizer().to_dict()
    kind = spec.get("type")
    if kind not in TOKENIZERS:
        raise ValueError(f"the artifact's tokenizer type {kind!r} is not one the server can load (it loads "
                         f"{sorted(TOKENIZERS)}); re-export the model with a supported tokenizer")
    return TOKENIZERS[kind](spec)


# Chat template for byte-level models, which have no chat tokens of their own: every message is a role tag line
# and its content line, and the prompt ends with the assistant's tag. The reply ends at EOS or where the model
# starts the next role tag, so CHAT_STOP is always a stop string of chat requests.
CHAT_ROLES = ("system", "user", "assistant")
CHAT_STOP = "\n<|"


def render_chat(messages: Sequence[tuple[str, str]]) -> str:
    """``[(role, content), ...]`` -> ``"<|role|>\\ncontent\\n" ... "<|assistant|>\\n"``."""
    parts = []
    for role, content in messages:
        if role not in CHAT_ROLES:
            raise ValueError(f"unknown chat role {role!r}; valid roles are {list(CHAT_ROLES)}")
        parts.append(f"<|{role}|>\n{content}\n")
    parts.append("<|assistant|>\n")
    return "".join(parts)


class StopMatcher:
    """Cuts generated text at the first stop string, holding back any tail that may still become one.

    ``push(text)`` returns ``(text safe to emit, stopped)``; after a stop nothing more is emitted. ``flush()``
    returns the held-back tail at the end of a stream that did not stop.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        self.stops = tuple(stops)
        self._pending = ""
        self.stopped = False

    def push(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        buf = self._pending + text
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self._pending, self.stopped = "", True
            return buf[:cut], True
        hold = max((n for s in self.stops for n in range(min(len(s) - 1, len(buf)), 0, -1)
                    if buf.endswith(s[:n])), default=0)
        self._pending = buf[len(buf) - hold:] if hold else ""
        return buf[:len(buf) - hold], False

    def flush(self) -> str:
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out
