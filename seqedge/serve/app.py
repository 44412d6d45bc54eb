"""The HTTP app: OpenAI-compatible routes over a :class:`~seqedge.serve.scheduler.Scheduler` (FastAPI).

``/v1/completions`` and ``/v1/chat/completions`` (JSON, or server-sent events with ``stream: true``),
``/v1/models`` and ``/health``. Errors come back in OpenAI's ``{"error": {...}}`` shape: 400 for an invalid
request, 404 for an unknown model, 429 when every slot and the queue are taken, 503 while the scheduler is not
running, 500 when the runtime failed. A client that disconnects cancels its stream, which frees its slot.

Annotations are evaluated (no ``from __future__ import annotations``): FastAPI reads the handlers' parameter types,
and ``fastapi`` is imported lazily inside :func:`create_app`.
"""

import asyncio
import json
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from .protocol import (ChatCompletionRequest, CompletionRequest, SamplingFields, chat_body, chat_chunk,
                       completion_body, error_body, model_list, new_id, now, usage, usage_chunk)
from .scheduler import Delta, GenerationRequest, QueueFull, Scheduler, Stream, Unavailable
from .text import CHAT_STOP, TextTokenizer, render_chat

INSTALL_HINT = "pip install 'seqedge[serve]'  (fastapi and uvicorn)"
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


def _fastapi():
    try:
        import fastapi
    except ImportError as err:
        raise ImportError(f"seqedge serve needs fastapi, which is not installed ({err}); run: {INSTALL_HINT}") \
            from None
    return fastapi


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

    async def collect(self, request: Any) -> tuple[str, Delta]:
        """The whole text and the final delta; a client that disconnects meanwhile cancels the stream."""
        watcher = asyncio.create_task(self._cancel_on_disconnect(request))
        parts = []
        try:
            async for delta in self.deltas():
                parts.append(delta.text)
            return "".join(parts), delta
        finally:
            watcher.cancel()

    async def _cancel_on_disconnect(self, request: Any) -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_S)
        self.stream.cancel()

    def usage(self) -> dict[str, int]:
        return usage(self.stream.prompt_tokens, self.stream.completion_tokens)


def _sse(data: Any) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def _failed(delta: Delta) -> APIError:
    if delta.finish_reason == "cancelled":
        return APIError(499, "the request was cancelled", "client_closed")
    return APIError(500, f"generation failed: {delta.error}", "server_error", code="runtime_error")


def create_app(scheduler: Scheduler, tokenizer: TextTokenizer, settings: AppSettings) -> Any:
    """The FastAPI app; it starts ``scheduler`` on startup and stops it on shutdown."""
    fastapi = _fastapi()
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            await asyncio.to_thread(scheduler.stop)

    app = fastapi.FastAPI(title="seqedge", description="OpenAI-compatible API of a seqedge artifact",
                          lifespan=lifespan)
    created = now()

    @app.exception_handler(APIError)
    async def _api_error(request: Any, err: APIError) -> Any:
        return JSONResponse(error_body(err.message, err.kind, err.param, err.code), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Any, err: RequestValidationError) -> Any:
        problems = [f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in err.errors()]
        first = err.errors()[0]["loc"] if err.errors() else ()
        param = ".".join(str(p) for p in first[1:]) or None
        return JSONResponse(error_body("invalid request: " + "; ".join(problems), "invalid_request_error", param),
                            status_code=400)

    def generation(body: SamplingFields, prompt: list[int], max_tokens: int | None,
                   extra_stop: tuple[str, ...] = ()) -> GenerationRequest:
        from seqedge.sampling import SamplingConfig

        if body.model != settings.model_name:
            raise APIError(404, f"model {body.model!r} is not served here; this server serves "
                                f"{settings.model_name!r} (GET /v1/models)", param="model", code="model_not_found")
        limit = settings.max_tokens_limit
        if max_tokens is not None and max_tokens > limit:
            raise APIError(400, f"max_tokens is {max_tokens}, more than this server's limit {limit}",
                           param="max_tokens")
        if len(prompt) > settings.max_prompt_tokens:
            raise APIError(400, f"the prompt has {len(prompt)} tokens, more than this server's limit "
                                f"{settings.max_prompt_tokens}", param="prompt")
        bad = [t for t in prompt if not 0 <= t < tokenizer.vocab_size]
        if bad:
            raise APIError(400, f"prompt token ids must lie in [0, {tokenizer.vocab_size}), got {bad[:4]}",
                           param="prompt")
        sampling = SamplingConfig(body.temperature, body.top_k, body.top_p, body.seed)
        return GenerationRequest(tuple(prompt), max_tokens or limit, sampling, body.stop_strings() + extra_stop)

    @app.get("/health")
    async def health() -> Any:
        status = "ok" if scheduler.running else "unavailable"
        body = {"status": status, "model": settings.model_name, **settings.info, **scheduler.describe()}
        return JSONResponse(body, status_code=200 if scheduler.running else 503)

    @app.get("/v1/models")
    async def models() -> Any:
        return model_list(settings.model_name, created)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: fastapi.Request) -> Any:
        prompt = (tokenizer.encode(body.prompt, add_bos=True) if isinstance(body.prompt, str)
                  else list(body.prompt))
        run = _Run(scheduler, generation(body, prompt, body.max_tokens))
        rid, model = new_id("cmpl"), settings.model_name
        if body.stream:
            async def events() -> AsyncIterator[str]:
                async for delta in run.deltas():
                    if delta.finish_reason in ("error", "cancelled"):
                        yield _sse(error_body(str(delta.error), "server_error"))
                        return
                    yield _sse(completion_body(rid, model, created, delta.text, delta.finish_reason))
                if body.include_usage():
                    yield _sse(usage_chunk(rid, "text_completion", model, created, run.usage()))
                yield _sse("[DONE]")

            return StreamingResponse(_cancelling(events(), run.stream), media_type="text/event-stream")
        text, last = await run.collect(request)
        if last.finish_reason not in ("stop", "length"):
            raise _failed(last)
        return completion_body(rid, model, created, text, last.finish_reason, run.usage())

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: fastapi.Request) -> Any:
        prompt = tokenizer.encode(render_chat([(m.role, m.text()) for m in body.messages]), add_bos=True)
        run = _Run(scheduler, generation(body, prompt, body.token_limit(), (CHAT_STOP,)))
        rid, model = new_id("chatcmpl"), settings.model_name
        if body.stream:
            async def events() -> AsyncIterator[str]:
                yield _sse(chat_chunk(rid, model, created, {"role": "assistant", "content": ""}, None))
                async for delta in run.deltas():
                    if delta.finish_reason in ("error", "cancelled"):
                        yield _sse(error_body(str(delta.error), "server_error"))
                        return
                    yield _sse(chat_chunk(rid, model, created, {"content": delta.text} if delta.text else {},
                                          delta.finish_reason))
                if body.include_usage():
                    yield _sse(usage_chunk(rid, "chat.completion.chunk", model, created, run.usage()))
                yield _sse("[DONE]")

            return StreamingResponse(_cancelling(events(), run.stream), media_type="text/event-stream")
        text, last = await run.collect(request)
        if last.finish_reason not in ("stop", "length"):
            raise _failed(last)
        return chat_body(rid, model, created, text, last.finish_reason, run.usage())

    return app


async def _cancelling(events: AsyncIterator[str], stream: Stream) -> AsyncIterator[str]:
    """``events``, cancelling ``stream`` however the response ends (a disconnect cancels this generator)."""
    try:
        async for event in events:
            yield event
    finally:
        stream.cancel()
