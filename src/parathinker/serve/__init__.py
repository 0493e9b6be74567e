"""serve/: the OpenAI-compatible server (``parathinker serve``).

``build_app(llm_or_engine_thread, config) -> FastAPI`` (app.py), ``EngineThread`` (engine_thread.py),
``ServeConfig`` (config.py), ``ServerThread`` / ``serve`` (server.py). Imported lazily, so the CLI
does not load the web stack unless it serves.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {"build_app": "app", "EngineThread": "engine_thread", "ServeConfig": "config",
            "ServerThread": "server", "serve": "server"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(name)
