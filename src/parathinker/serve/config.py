"""Server settings. The ``parathinker serve`` options are generated from this dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError

BUNDLED_MODEL_NAME = "parathinker-pathfind"


@dataclass
class ServeConfig:
    """HTTP server: where it listens, who may call it, how much it queues."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to bind (0.0.0.0: every interface)"})
    port: int = field(default=8000, metadata={"help": "TCP port (0: any free port)"})
    served_model_name: str | None = field(
        default=None,
        metadata={"help": f"the model name clients send (default: --model as given, or {BUNDLED_MODEL_NAME!r} "
                  "for the bundled model)"},
    )
    api_key: str | None = field(
        default=None, metadata={"help": "require 'Authorization: Bearer KEY' on /v1/* (default: no key)"}
    )
    max_waiting: int | None = field(
        default=None,
        metadata={"help": "answer 429 when this many requests already wait for KV pages (default: no limit)"},
    )
    max_n: int = field(default=16, metadata={"help": "largest n (independent runs) one HTTP request may ask for"})
    keepalive_s: float = field(
        default=5.0, metadata={"help": "seconds between SSE keep-alive comments while paths think unstreamed"}
    )
    shutdown_timeout_s: float = field(
        default=30.0,
        metadata={"help": "on Ctrl-C/SIGTERM: seconds in-flight requests may finish before they are aborted"},
    )
    data_parallel_size: int = field(
        default=1,
        metadata={"help": "engine processes, each with its own copy of the model, requests spread over them (CPU; "
                  "1: one engine thread in the server's process). On a CPU whose cores one engine leaves idle, "
                  "2+ raise throughput under load (docs/serving.md)"},
    )
    log_level: str = field(default="info", metadata={"help": "uvicorn log level: critical, error, warning, info, debug"})

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if self.max_waiting is not None and self.max_waiting < 1:
            raise ConfigError(f"max_waiting must be >= 1 (or unset for no limit), got {self.max_waiting}")
        if self.max_n < 1:
            raise ConfigError(f"max_n must be >= 1, got {self.max_n}")
        if self.keepalive_s <= 0:
            raise ConfigError(f"keepalive_s must be > 0 seconds, got {self.keepalive_s}")
        if self.shutdown_timeout_s < 0:
            raise ConfigError(f"shutdown_timeout_s must be >= 0 seconds, got {self.shutdown_timeout_s}")
        if self.api_key == "":
            raise ConfigError("api_key is empty: give a non-empty key or leave it out")
        if self.data_parallel_size < 1:
            raise ConfigError(f"data_parallel_size must be >= 1, got {self.data_parallel_size}")
        levels = ("critical", "error", "warning", "info", "debug", "trace")
        if self.log_level not in levels:
            raise ConfigError(f"log_level must be one of {', '.join(levels)}, got {self.log_level!r}")
