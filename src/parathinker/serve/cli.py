"""``parathinker serve``: the OpenAI-compatible server (options from ServeConfig and CacheConfig)."""

from __future__ import annotations

import argparse
from typing import Any

from ..cliutil import add_dataclass_args, dataclass_from_args
from ..engine.kv_cache import CacheConfig
from .config import ServeConfig


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand to the main CLI's subparsers."""
    from ..cli import _add_model_args

    p = subparsers.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API (chat/completions, streaming)",
        description="OpenAI-compatible server for native parallel thinking: the paths are the reasoning, the "
                    "summary is the content. ParaThinker fields (num_paths, termination, mode, ...) go in the "
                    "request body. See docs/serving.md.",
    )
    _add_model_args(p)
    add_dataclass_args(p, ServeConfig)
    add_dataclass_args(p, CacheConfig)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    config = dataclass_from_args(ServeConfig, args)  # validated before the model loads
    cache = dataclass_from_args(CacheConfig, args)
    from ..engine.llm import LLM
    from .server import serve

    llm = LLM(args.model, device=args.device, dtype=args.dtype, cache=cache, threads=args.threads)
    if config.served_model_name is None and args.model is not None:
        config.served_model_name = args.model
    serve(llm, config)
    return 0
