"""Text in and out of the server: the tokenizer interface, the chat template for byte models, stop strings.

The server needs only :class:`seqedge.tokenizer.Tokenizer` from a tokenizer (``encode``, a streaming decoder,
the stop ids), so the byte tokenizer and an imported model's ``tokenizer.json`` plug in alike; the served
artifact's own tokenizer is ``session.tokenizer``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from seqedge.tokenizer import Tokenizer, tokenizer_from_record


TextTokenizer = Tokenizer          # the server needs only the tokenizer interface


def tokenizer_from_manifest(manifest_data: Mapping[str, Any]) -> TextTokenizer:
    """The tokenizer a manifest's ``tokenizer`` record names when it needs no file (the byte tokenizer, also
    when the record is absent); a served artifact's own tokenizer, file included, is ``session.tokenizer``."""
    def no_file(record: Mapping[str, Any]) -> bytes:
        raise ValueError("this tokenizer is a file of its artifact: load it with the artifact "
                         "(seqedge.load(...).tokenizer)")

    return tokenizer_from_record(manifest_data.get("tokenizer"), no_file)


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
