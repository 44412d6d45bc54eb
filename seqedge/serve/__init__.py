"""``seqedge serve``: an OpenAI-compatible HTTP server with continuous batching over fixed-size state slots.

``scheduler`` (slots, admission, batched steps, sampling, stop strings) and ``slots`` (the batched state) are pure
logic over any runtime's Session; ``app`` and ``protocol`` are the HTTP layer (FastAPI, imported lazily);
``server`` builds the whole from an artifact.
"""

from .scheduler import Delta, GenerationRequest, QueueFull, Scheduler, SchedulerConfig, Stream, Unavailable
from .server import ServeConfig, Server, build_server

__all__ = ["Delta", "GenerationRequest", "QueueFull", "Scheduler", "SchedulerConfig", "ServeConfig", "Server",
           "Stream", "Unavailable", "build_server"]
