"""parathinker: native parallel thinking for LLMs (ParaThinker, arXiv 2509.04475)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ParaThinkerError

if TYPE_CHECKING:
    from .engine import (
        LLM,
        CacheConfig,
        DecodeConfig,
        ParallelParams,
        RequestOutput,
        SamplingParams,
        ScoreOutput,
    )

__version__ = "0.1.0"
__all__ = ["LLM", "CacheConfig", "DecodeConfig", "ParallelParams", "ParaThinkerError", "RequestOutput", "SamplingParams", "ScoreOutput"]


def __getattr__(name: str) -> Any:  # noqa: ANN401
    """The engine's public names, imported on first use: ``parathinker.train`` / ``.tasks`` do not load the engine."""
    if name in __all__:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'parathinker' has no attribute {name!r}")
