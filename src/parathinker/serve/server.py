"""Run the app: ``serve`` (the CLI's, blocking, Ctrl-C/SIGTERM drain then exit) and ``ServerThread``
(uvicorn on a thread of this process: tests and benchmarks)."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import uvicorn

from .app import build_app
from .config import ServeConfig


def _uvicorn_config(app: Any, config: ServeConfig, log_level: str | None = None) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=config.host, port=config.port, log_level=log_level or config.log_level,
        timeout_graceful_shutdown=int(config.shutdown_timeout_s) or None, lifespan="on",
    )


def serve(llm: Any, config: ServeConfig) -> None:
    """Serve until Ctrl-C / SIGTERM: stop taking requests, let in-flight ones finish (up to
    ``shutdown_timeout_s``), abort the rest, stop the engine thread, return (exit code 0).

    uvicorn handles the signal, then raises it again once it has shut down; the handlers set
    here take that second delivery, so a drained server exits normally instead of by the signal.
    """
    server = uvicorn.Server(_uvicorn_config(build_app(llm, config), config))
    if threading.current_thread() is not threading.main_thread():
        server.run()
        return
    seen: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: seen.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class ServerThread:
    """The app on uvicorn in a background thread (bind to port 0 for a free port); a context manager.

    >>> with ServerThread(build_app(llm, ServeConfig(port=0))) as s:
    ...     openai.OpenAI(base_url=s.url + "/v1", api_key="x")
    """

    def __init__(self, app: Any, config: ServeConfig | None = None, log_level: str = "warning"):
        config = config or ServeConfig(port=0)
        self.app = app
        self.server = uvicorn.Server(_uvicorn_config(app, config, log_level))
        self.thread = threading.Thread(target=self.server.run, name="parathinker-uvicorn", daemon=True)
        self.host = config.host

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
