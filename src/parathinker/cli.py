"""``parathinker`` command line. Options come from the config dataclasses (cliutil)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .cliutil import (
    FLAGS_DEST,
    Parser,
    add_dataclass_args,
    add_model_args,
    cli_message,
    dataclass_from_args,
    record_flags,
)
from .engine.decode.config import DecodeConfig
from .engine.kv_cache import CacheConfig
from .errors import ParaThinkerError
from .params import ParallelParams, SamplingParams


def _add_generate(sub: Any) -> None:
    p = sub.add_parser(
        "generate", help="think in parallel about a question and print the paths, summary and answer",
        description="Run P reasoning paths from one prompt, then a summary over all of them.",
    )
    p.add_argument("question", nargs="+", help="the question(s); several run as one batch")
    add_model_args(p)
    g = p.add_argument_group("output")
    g.add_argument("--show-paths", action="store_true", help="print every path in full (default: one line each)")
    g.add_argument("--json", action="store_true", help="print the outputs as JSON")
    g.add_argument("--raw", action="store_true", help="send the question untouched (no chat template, no instruction)")
    # per-request options: what is typed wins, the rest comes from the checkpoint, then the library
    add_dataclass_args(p, ParallelParams, layered=True)
    add_dataclass_args(p, SamplingParams, layered=True)
    add_dataclass_args(p, CacheConfig)
    add_dataclass_args(p, DecodeConfig)
    p.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    cache = dataclass_from_args(CacheConfig, args)
    # only the options typed (the others are absent from args); constructing them validates them
    # before the slow model load, and LLM.generate resolves the rest (PromptStyle.resolve)
    pp = dataclass_from_args(ParallelParams, args)
    sp = dataclass_from_args(SamplingParams, args)
    from .engine.llm import LLM

    decode = dataclass_from_args(DecodeConfig, args)
    llm = LLM(args.model, device=args.device, dtype=args.dtype, cache=cache, decode=decode, threads=args.threads)
    # a progress bar only on a terminal: in a log its carriage returns are noise
    outs = llm.generate(args.question, pp, sp, raw=args.raw, progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps([_as_dict(o) for o in outs], indent=2, ensure_ascii=False))
    else:
        from .render import render_output

        for o in outs:
            render_output(o, show_paths=args.show_paths)
    return 0


def _as_dict(o: Any) -> dict[str, Any]:
    import dataclasses

    d = dataclasses.asdict(o)
    for p in d["paths"]:
        p.pop("logprobs", None)
    if d["summary"]:
        d["summary"].pop("logprobs", None)
    return d


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="parathinker", description="Native parallel thinking for LLMs: run, train and evaluate ParaThinker models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    from .eval.cli import register as register_eval
    from .serve.cli import register as register_serve
    from .tasks.cli import register as register_task
    from .train.cli import register as register_train

    for register in (register_train, register_eval, register_task, register_serve):
        register(sub)
    record_flags(parser)
    return parser


def _format_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> str:
    return f"parathinker: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    warnings.formatwarning = _format_warning  # one line, like the errors (no source line, no path)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ParaThinkerError as e:
        print(f"parathinker: error: {cli_message(str(e), getattr(args, FLAGS_DEST, {}))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("parathinker: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
