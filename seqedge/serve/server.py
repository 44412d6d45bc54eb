"""Build and run the server for an artifact: Session -> Scheduler -> FastAPI app -> uvicorn."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .scheduler import Scheduler, SchedulerConfig

UVICORN_HINT = "pip install 'seqedge[serve]'  (fastapi and uvicorn)"
GRACEFUL_SHUTDOWN_S = 5


@dataclass(frozen=True)
class ServeConfig:
    """What to serve (artifact, runtime, quantization), where (host, port), and the scheduler's settings."""

    artifact: str
    runtime: str = "onnxruntime"
    quantization: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str | None = None
    max_tokens_limit: int = 4096
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    runtime_options: dict[str, Any] = field(default_factory=dict)   # given to the runtime (e.g. executorch's library)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must lie in [0, 65535], got {self.port}")
        if not self.host:
            raise ValueError("host must not be empty")
        if self.model_name is not None and not self.model_name:
            raise ValueError("model_name must not be empty (leave it out to use the artifact's folder name)")

    @property
    def served_name(self) -> str:
        return self.model_name or Path(self.artifact).resolve().name


@dataclass
class Server:
    """A built server: its Session, Scheduler and app, not yet listening."""

    config: ServeConfig
    session: Any
    scheduler: Scheduler
    app: Any

    def startup_line(self, port: int | None = None) -> str:
        plan = self.scheduler.states.plan
        stepping = ("batched step" if plan.batched else "one slot per step") + f" ({plan.reason})"
        return (f"[seqedge serve: {self.config.served_name} on {self.session.runtime} running "
                f"{self.session.variant.name}, {self.scheduler.config.slots} slots, {stepping}; "
                f"http://{self.config.host}:{self.config.port if port is None else port}/v1]")

    def uvicorn_server(self) -> Any:
        """A ``uvicorn.Server`` for the app (``run(sockets=[...])`` to serve on an already bound socket)."""
        try:
            import uvicorn
        except ImportError as err:
            raise ImportError(f"seqedge serve needs uvicorn, which is not installed ({err}); run: {UVICORN_HINT}") \
                from None
        return uvicorn.Server(uvicorn.Config(self.app, host=self.config.host, port=self.config.port,
                                             log_level="warning", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S))


def build_server(config: ServeConfig) -> Server:
    """Open the artifact on its runtime, probe batching, and build the app (nothing listens yet)."""
    from seqedge.runtimes import load

    from .app import AppSettings, create_app

    session = load(config.artifact, config.runtime, quantization=config.quantization, **config.runtime_options)
    tokenizer = session.tokenizer
    scheduler = Scheduler(session, tokenizer, config.scheduler)
    info = {"runtime": session.runtime, "variant": session.variant.name}
    settings = AppSettings(config.served_name, config.max_tokens_limit, info=info)
    return Server(config, session, scheduler, create_app(scheduler, tokenizer, settings))


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one), for ``uvicorn.Server.run(sockets=...)``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock
