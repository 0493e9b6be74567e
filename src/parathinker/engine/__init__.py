"""The inference engine: paged KV pool, batched path decoding, termination, summary over reused KV."""

from ..params import ParallelParams, SamplingParams
from ..prompting import PromptStyle, encode_prompt, format_prompt
from .decode.config import DecodeConfig
from .engine import Engine
from .kv_cache import CacheConfig
from .llm import LLM
from .outputs import PathOutput, RequestOutput, ScoreOutput, SummaryOutput

__all__ = [
    "LLM", "CacheConfig", "DecodeConfig", "Engine", "ParallelParams", "PathOutput", "PromptStyle", "RequestOutput",
    "SamplingParams", "ScoreOutput", "SummaryOutput", "encode_prompt", "format_prompt",
]
