"""The HTTP app: OpenAI-compatible routes over a :class:`~seqedge.serve.scheduler.Scheduler` (FastAPI).

``/v1/completions`` and ``/v1/chat/completions`` (JSON, or server-sent events with ``stream: true``),
``/v1/models`` and ``/health``. Errors come back in OpenAI's ``{"error": {...}}`` shape: 400 for an invalid
request, 404 for an unknown model, 429 when every slot and the queue are taken, 503 while the scheduler is not
running, 500 when the runtime failed. A client that disconnects cancels its stream, which frees its slot.

This module imports FastAPI; only :func:`seqedge.serve.server.build_server` imports this module.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, AsyncIterator, Callable

from seqedge.sampling import SamplingConfig

from .protocol import (ChatCompletionRequest, CompletionRequest, SamplingFields, chat_body, chat_chunk,
                       completion_body, error_body, model_list, new_id, now, usage, usage_chunk)
from .scheduler import Delta, GenerationRequest, QueueFull, Scheduler, Stream, Unavailable
from .text import CHAT_STOP, TextTokenizer, render_chat

INSTALL_HINT = "pip install 'seqedge[serve]'  (fastapi and uvicorn)"
try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
except ImportError as _err:
    raise ImportError(f"seqedge serve needs fastapi, which is not installed ({_err}); run: {INSTALL_HINT}") \
        from None

DISCONNECT_POLL_S = 0.5    # how often a non-streaming request checks whether its client is still there


@dataclass(frozen=True)
class AppSettings:
    """The served model's name, request limits, and what /health reports about the runtime."""

    model_name: str
    max_tokens_limit: int = 4096
    max_prompt_tokens: int = 65536
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.model_name:
            raise ValueError("model_name must not be empty")
        if self.max_tokens_limit < 1:
            raise ValueError(f"max_tokens_limit must be >= 1, got {self.max_tokens_limit}")
        if self.max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1, got {self.max_prompt_tokens}")


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


def _sse(data: Any) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


class _Run:
    """One submitted stream seen from the event loop: its deltas arrive on an asyncio queue."""

    def __init__(self, scheduler: Scheduler, request: GenerationRequest) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Delta] = asyncio.Queue()
        try:
            self.stream: Stream = scheduler.submit(request, self._emit)
        except QueueFull as err:
            raise APIError(429, str(err), "rate_limit_error", code="queue_full") from None
        except Unavailable as err:
            raise APIError(503, str(err), "server_error", code="unavailable") from None

    def _emit(self, delta: Delta) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, delta)
        except RuntimeError:       # the event loop has closed: nobody is left to read this stream
            pass

    async def deltas(self) -> AsyncIterator[Delta]:
        while True:
            delta = await self.queue.get()
            yield delta
            if delta.finish_reason is not None:
                return

    def usage(self) -> dict[str, int]:
        return usage(self.stream.prompt_tokens, self.stream.completion_tokens)

    async def answer(self, request: Request) -> tuple[str, str]:
        """The whole text and its finish reason; a client that disconnects meanwhile cancels the stream."""
        watcher = asyncio.create_task(self._cancel_on_disconnect(request))
        try:
            parts = [delta async for delta in self.deltas()]
        finally:
            watcher.cancel()
        last = parts[-1]
        if last.finish_reason == "cancelled":
            raise APIError(499, "the request was cancelled", "client_closed")
        if last.finish_reason == "error":
            raise APIError(500, f"generation failed: {last.error}", "server_error", code="runtime_error")
        return "".join(d.text for d in parts), last.finish_reason

    async def _cancel_on_disconnect(self, request: Request) -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_S)
        self.stream.cancel()

    async def events(self, chunk: Callable[[Delta], dict], usage_chunk_: Callable[[dict], dict] | None,
                     head: tuple[dict, ...] = ()) -> AsyncIterator[str]:
        """The SSE stream: ``head`` chunks, one ``chunk(delta)`` per delta, ``usage_chunk_(usage)`` if given,
        then ``[DONE]``.

        However the response ends (a client disconnect cancels this generator), the stream is cancelled.
        """
        try:
            for item in head:
                yield _sse(item)
            async for delta in self.deltas():
                if delta.finish_reason in ("error", "cancelled"):
                    yield _sse(error_body(f"generation ended: {delta.error or delta.finish_reason}",
                                          "server_error"))
                    return
                yield _sse(chunk(delta))
            if usage_chunk_ is not None:
                yield _sse(usage_chunk_(self.usage()))
            yield _sse("[DONE]")
        finally:
            self.stream.cancel()


class _Api:
    """The route handlers of one served model."""

    def __init__(self, scheduler: Scheduler, tokenizer: TextTokenizer, settings: AppSettings) -> None:
        self.scheduler, self.tokenizer, self.settings = scheduler, tokenizer, settings
        self.created = now()

    def start(self, body: SamplingFields, prompt: list[int], max_tokens: int | None,
              extra_stop: tuple[str, ...] = ()) -> _Run:
        """Check what pydantic cannot (model, limits, token ids) and submit the stream."""
        settings, vocab = self.settings, self.tokenizer.vocab_size
        if body.model is not None and body.model != settings.model_name:
            raise APIError(404, f"model {body.model!r} is not served here; this server serves "
                                f"{settings.model_name!r} (GET /v1/models)", param="model", code="model_not_found")
        if max_tokens is not None and max_tokens > settings.max_tokens_limit:
            raise APIError(400, f"max_tokens is {max_tokens}, more than this server's limit "
                                f"{settings.max_tokens_limit}", param="max_tokens")
        if len(prompt) > settings.max_prompt_tokens:
            raise APIError(400, f"the prompt has {len(prompt)} tokens, more than this server's limit "
                                f"{settings.max_prompt_tokens}", param="prompt")
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise APIError(400, f"prompt token ids must lie in [0, {vocab}), got {bad[:4]}", param="prompt")
        sampling = SamplingConfig(body.temperature, body.top_k, body.top_p, body.seed)
        request = GenerationRequest(tuple(prompt), max_tokens or settings.max_tokens_limit, sampling,
                                    body.stop_strings() + extra_stop)
        return _Run(self.scheduler, request)

    async def health(self) -> JSONResponse:
        ok = self.scheduler.running
        body = {"status": "ok" if ok else "unavailable", "model": self.settings.model_name, **self.settings.info,
                **self.scheduler.describe()}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def models(self) -> dict[str, Any]:
        return model_list(self.settings.model_name, self.created)

    async def completions(self, body: CompletionRequest, request: Request) -> Any:
        tok = self.tokenizer
        prompt = tok.encode(body.prompt, add_bos=True) if isinstance(body.prompt, str) else list(body.prompt)
        run = self.start(body, prompt, body.max_tokens)
        rid, model, created = new_id("cmpl"), self.settings.model_name, self.created
        if body.stream:
            usage_ = partial(usage_chunk, rid, "text_completion", model, created) if body.include_usage() else None
            events = run.events(lambda d: completion_body(rid, model, created, d.text, d.finish_reason), usage_)
            return StreamingResponse(events, media_type="text/event-stream")
        text, finish = await run.answer(request)
        return completion_body(rid, model, created, text, finish, run.usage())

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Any:
        prompt = self.tokenizer.encode(render_chat([(m.role, m.text()) for m in body.messages]), add_bos=True)
        run = self.start(body, prompt, body.token_limit(), (CHAT_STOP,))
        rid, model, created = new_id("chatcmpl"), self.settings.model_name, self.created
        if body.stream:
            usage_ = (partial(usage_chunk, rid, "chat.completion.chunk", model, created) if body.include_usage()
                      else None)
            head = (chat_chunk(rid, model, created, {"role": "assistant", "content": ""}, None),)
            events = run.events(lambda d: chat_chunk(rid, model, created, {"content": d.text} if d.text else {},
                                                     d.finish_reason), usage_, head)
            return StreamingResponse(events, media_type="text/event-stream")
        text, finish = await run.answer(request)
        return chat_body(rid, model, created, text, finish, run.usage())


def _invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
    """pydantic's errors as one 400 message naming every bad field (``param``: the first)."""
    errors = err.errors()
    where = [".".join(str(p) for p in e["loc"][1:]) for e in errors]      # loc[0] is "body"
    message = "invalid request: " + "; ".join(f"{w or 'body'}: {e['msg']}" for w, e in zip(where, errors))
    return JSONResponse(error_body(message, "invalid_request_error", where[0] if where else None), status_code=400)


def create_app(scheduler: Scheduler, tokenizer: TextTokenizer, settings: AppSettings) -> FastAPI:
    """The FastAPI app; it starts ``scheduler`` on startup and stops it on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            await asyncio.to_thread(scheduler.stop)

    api = _Api(scheduler, tokenizer, settings)
    app = FastAPI(title="seqedge", description="OpenAI-compatible API of a seqedge artifact", lifespan=lifespan)
    app.add_exception_handler(APIError, lambda request, err: JSONResponse(
        error_body(err.message, err.kind, err.param, err.code), status_code=err.status))
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_api_route("/health", api.health, methods=["GET"])
    app.add_api_route("/v1/models", api.models, methods=["GET"])
    app.add_api_route("/v1/completions", api.completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", api.chat, methods=["POST"])
    return app
