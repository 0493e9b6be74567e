"""parathinker: native parallel thinking for LLMs (ParaThinker, arXiv 2509.04475)."""

from __future__ import annotations

from .engine import LLM, CacheConfig, ParallelParams, RequestOutput, SamplingParams, ScoreOutput
from .errors import ParaThinkerError

__version__ = "0.1.0"
__all__ = ["LLM", "CacheConfig", "ParallelParams", "ParaThinkerError", "RequestOutput", "SamplingParams", "ScoreOutput"]
