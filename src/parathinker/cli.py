"""``parathinker`` command line. Options come from the config dataclasses (cliutil)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .cliutil import add_dataclass_args, dataclass_from_args
from .engine.decode.config import DecodeConfig
from .engine.kv_cache import CacheConfig
from .engine.params import ParallelParams, SamplingParams
from .errors import ParaThinkerError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="HF checkpoint directory, or 'smollm2' (default: the bundled model)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    g.add_argument("--threads", default="auto", help="torch CPU threads (auto: 1 for models under 20M parameters)")


def _add_generate(sub: Any) -> None:
    p = sub.add_parser(
        "generate", help="think in parallel about a question and print the paths, summary and answer",
        description="Run P reasoning paths from one prompt, then a summary over all of them.",
    )
    p.add_argument("question", nargs="+", help="the question(s); several run as one batch")
    _add_model_args(p)
    g = p.add_argument_group("output")
    g.add_argument("--show-paths", action="store_true", help="print every path in full (default: one line each)")
    g.add_argument("--json", action="store_true", help="print the outputs as JSON")
    g.add_argument("--raw", action="store_true", help="send the question untouched (no chat template, no instruction)")
    add_dataclass_args(p, ParallelParams)
    add_dataclass_args(p, SamplingParams)
    add_dataclass_args(p, CacheConfig)
    add_dataclass_args(p, DecodeConfig)
    p.set_defaults(func=_generate)


def _explicit(args: argparse.Namespace, cls: type, parser_defaults: dict[str, Any]) -> dict[str, Any]:
    """Fields the user set on the command line (others fall back to the checkpoint's defaults)."""
    import dataclasses

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if getattr(args, f.name) != parser_defaults.get(f.name)}


def _generate(args: argparse.Namespace) -> int:
    from .engine.llm import LLM

    cache = dataclass_from_args(CacheConfig, args)
    decode = dataclass_from_args(DecodeConfig, args)
    # validate options before the (slow) model load
    dataclass_from_args(ParallelParams, args)
    dataclass_from_args(SamplingParams, args)
    llm = LLM(args.model, device=args.device, dtype=args.dtype, cache=cache, decode=decode, threads=args.threads)
    dp, ds = llm.default_params()
    import dataclasses

    pp = dataclasses.replace(dp, **_explicit(args, ParallelParams, args._defaults))
    sp = dataclasses.replace(ds, **_explicit(args, SamplingParams, args._defaults))
    outs = llm.generate(args.question, pp, sp, raw=args.raw, progress=not args.json)
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
    parser = argparse.ArgumentParser(
        prog="parathinker", description="Native parallel thinking for LLMs: run, train and evaluate ParaThinker models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    from .eval.cli import register as register_eval
    from .tasks.cli import register as register_task
    from .train.cli import register as register_train

    for register in (register_train, register_eval, register_task):
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # defaults of this subcommand, to tell explicit options from untouched ones
    sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sp = sub_action.choices[args.command]
    args._defaults = {a.dest: a.default for a in sp._actions}
    try:
        return int(args.func(args) or 0)
    except ParaThinkerError as e:
        print(f"parathinker: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("parathinker: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
