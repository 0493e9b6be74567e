"""``parathinker eval`` and ``parathinker report``: options, and the functions they call.

The main CLI calls ``register(subparsers)``; each subcommand sets ``func(args) -> int``. Bad
input raises a ``parathinker.errors`` exception whose one-line message the main CLI prints.
Sampling and parallel-thinking options come from the engine's param dataclasses (cliutil).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..cliutil import add_dataclass_args, dataclass_from_args, parse_threads
from ..errors import CheckpointError, ConfigError
from ..params import ParallelParams, SamplingParams
from ..prompting import PromptStyle
from .benchmarks import BENCHMARK_NAMES, PATHFIND, benchmark_label, load_benchmark, parse_benchmark_list
from .report import build_report
from .runner import GenerateLLM, run_eval
from .settings import METHODS, EvalSettings, RunPlan, check_termination, parse_int_list, parse_shard
from .tunnel import run_tunnel_vision


def register(subparsers: Any) -> None:
    """Add the ``eval`` and ``report`` subcommands to the main CLI's subparsers."""
    ev = subparsers.add_parser(
        "eval", help="run benchmarks (sequential / majority / parathinker / reprefill) into a run folder",
        description="Evaluate a model; resumable: rerun the same command to continue a killed run.",
    )
    g = ev.add_argument_group("what to run")
    g.add_argument("--model", help="model directory (or hub id) for parathinker.LLM (or --base-url)")
    g.add_argument("--benchmark", required=True,
                   help=f"comma list of {', '.join(BENCHMARK_NAMES)}, {PATHFIND} (the bundled task's held-out set, "
                   "made in memory) or paths to .jsonl files (problem + answer)")
    g.add_argument("--method", default="sequential,majority,parathinker", help=f"comma list of {', '.join(METHODS)}")
    g.add_argument("--paths", default="1,2,4,8", help="comma list of P (number of parallel paths)")
    g.add_argument("--samples", type=int, default=1, help="runs per problem (paper: 16 small sets, 4 MATH-500)")
    g.add_argument("--vote", type=int, default=0, help="also run rows of k parathinker runs majority-voted (0 = off)")
    g.add_argument("--out", required=True, help="run folder (logs, run.json, report)")
    g.add_argument("--data-dir", help="folder of local benchmark JSONL (NAME/test.jsonl or NAME.jsonl); "
                   "without it named benchmarks are downloaded from the Hugging Face hub")
    g.add_argument("--limit", type=int, help="only the first N problems of each benchmark")
    g.add_argument("--shard", default="0/1", help="i/n: run the i-th of n disjoint parts (0-based)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="problems per generate call (default 1; with --base-url: --concurrency)")
    g.add_argument("--device", help="device for the model (default: the engine's)")
    g.add_argument("--threads", default="auto", type=parse_threads,
                   help="torch CPU threads: a number, or auto (1 for models under 20M parameters, else torch's)")
    g.add_argument("--seed", type=int, default=0, help="base seed; sample s uses seed + s")
    g.add_argument("--sequential-max-tokens", type=int, default=None,
                   help="budget of the sequential-long method (default: 2 x --max-path-tokens)")
    g.add_argument("--prompt-template", default="{problem}", help="user prompt; {problem} is replaced")
    g.add_argument("--save-text", action="store_true", help="keep path and summary texts in the log")
    g.add_argument("--tunnel-vision", action="store_true",
                   help="run the tunnel-vision experiment instead (sequential; uses --samples, --limit)")
    g.add_argument("--tunnel-prefixes", default="100,200,400,800,1600", help="prefix lengths in tokens")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    r = ev.add_argument_group("a served model (instead of --model): parathinker serve, or its Ray Serve replicas")
    r.add_argument("--base-url", action="append", default=[],
                   help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1; repeat for replicas")
    r.add_argument("--served-model", help="model name on the server (default: the one it serves)")
    r.add_argument("--concurrency", type=int, default=32,
                   help="requests in flight over all URLs; with --base-url, --batch-size defaults to it")
    r.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    # what is typed wins, the rest comes from the checkpoint's parathinker.json (or the server's), then the library
    add_dataclass_args(ev, SamplingParams, skip=("seed",), layered=True)
    add_dataclass_args(ev, ParallelParams, skip=("num_paths", "mode"), layered=True)
    ev.set_defaults(func=cmd_eval)

    rep = subparsers.add_parser("report", help="tables (Markdown, JSON) and plots of a run folder")
    rep.add_argument("run_dir", help="the --out folder of `parathinker eval`")
    rep.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    rep.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    rep.set_defaults(func=cmd_report)


def load_llm(model: str, device: str | None, threads: int | str = "auto") -> GenerateLLM:
    """Construct the engine's ``LLM`` (imported here so the harness works without it in tests)."""
    try:
        from .. import LLM  # type: ignore[attr-defined]
    except ImportError:
        raise ConfigError("the engine (parathinker.LLM) is not available in this install") from None
    if not Path(model).exists() and model.startswith((".", "/")):
        raise CheckpointError(f"--model {model}: no such directory")
    return LLM(model, device=device, threads=threads) if device else LLM(model, threads=threads)


def checkpoint_style(model: str) -> PromptStyle:
    """The checkpoint's prompting defaults (its parathinker.json), read without loading the model."""
    from ..engine.llm import resolve_model_path

    return PromptStyle.from_checkpoint(resolve_model_path(model))


def settings_from_args(args: argparse.Namespace, style: PromptStyle | None = None) -> EvalSettings:
    """EvalSettings from parsed ``eval`` options: what is typed > the checkpoint's defaults (``style``)
    > the library's, by the one rule ``PromptStyle.resolve`` (the model path is made absolute if it
    exists). The summary prefix is kept as typed (None: the engine uses the checkpoint's)."""
    if getattr(args, "base_url", None):  # the run is tied to the served model's name (a resume must ask it again)
        model = f"served:{args.served_model}"
    else:
        model = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
    pp, sp = (style or PromptStyle()).resolve(
        dataclass_from_args(ParallelParams, args), dataclass_from_args(SamplingParams, args)
    )
    return EvalSettings(
        model=model, temperature=sp.temperature, top_p=sp.top_p, top_k=sp.top_k, seed=args.seed,
        max_path_tokens=pp.max_path_tokens, summary_max_tokens=pp.summary_max_tokens,
        termination=pp.termination, summary_prefix=getattr(args, "summary_prefix", None),
        flat_positions=pp.flat_positions, thought_embeddings=pp.thought_embeddings,
        sequential_max_tokens=args.sequential_max_tokens, prompt_template=args.prompt_template,
    )


def plan_from_args(args: argparse.Namespace, benchmarks: tuple[str, ...]) -> RunPlan:
    """RunPlan from parsed ``eval`` options."""
    methods = tuple(m.strip() for m in args.method.split(",") if m.strip())
    return RunPlan(
        benchmarks=benchmarks, methods=methods, paths=parse_int_list(args.paths, "--paths"),
        samples=args.samples, vote=args.vote, limit=args.limit, shard=parse_shard(args.shard),
        batch_size=args.batch_size or (args.concurrency if args.base_url else 1), save_text=args.save_text,
        tunnel_prefixes=parse_int_list(args.tunnel_prefixes, "--tunnel-prefixes"),
    )


def cmd_eval(args: argparse.Namespace) -> int:
    """Run ``parathinker eval``: load benchmarks and the model, run (or resume) into ``--out``."""
    specs = parse_benchmark_list(args.benchmark)
    labels = tuple(benchmark_label(s) for s in specs)
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--benchmark: two benchmarks share the name {labels}; rename a file")
    remote = None
    if args.base_url:
        if args.model is not None:
            raise ConfigError("give --model (in-process) or --base-url (a served model), not both")
        if args.tunnel_vision:
            raise ConfigError("--tunnel-vision runs in-process only: give --model instead of --base-url")
        from .remote import RemoteLLM

        remote = RemoteLLM(args.base_url, args.served_model, concurrency=args.concurrency,
                           api_key_env=args.api_key_env)
        args.served_model = remote.served_model
    elif args.model is None:
        raise ConfigError("give --model DIR (in-process) or --base-url URL (a served model)")
    plan = plan_from_args(args, labels)
    # over HTTP the server applies its checkpoint's defaults to what is not typed
    settings = settings_from_args(args, None if remote is not None else checkpoint_style(args.model))
    check_termination(plan, settings)  # before the model loads (preflight checks the rest against it)
    problems = {lab: load_benchmark(spec, args.data_dir) for lab, spec in zip(labels, specs)}
    if remote is not None:
        remote.check_plan(plan.cells())
    llm = remote if remote is not None else load_llm(args.model, args.device, args.threads)
    if args.tunnel_vision:
        new = run_tunnel_vision(llm, problems, plan, settings, args.out, progress=not args.no_progress)
    else:
        new = run_eval(llm, problems, plan, settings, args.out, progress=not args.no_progress)
    print(f"{new} new records in {args.out}; tables and plots: parathinker report {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Run ``parathinker report``: write report.md/json and plots, print the Markdown."""
    if args.bootstrap < 1:
        raise ConfigError(f"--bootstrap must be >= 1, got {args.bootstrap}")
    build_report(args.run_dir, n_boot=args.bootstrap, plots=not args.no_plots)
    print((Path(args.run_dir) / "report.md").read_text())
    return 0
