"""`parathinker prepare`, `parathinker data check|generate`, `parathinker train` (wired by parathinker.cli)."""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from pathlib import Path

from ..cliutil import FLAGS_DEST, Parser, add_dataclass_args, cli_message, dataclass_from_args, record_flags
from ..errors import ParaThinkerError
from .collate import PackConfig
from .config import TrainConfig
from .datagen_config import DataGenConfig


def register(subparsers) -> None:  # noqa: ANN001 - argparse's private _SubParsersAction
    """Add the training commands to the top-level CLI."""
    p = subparsers.add_parser("prepare", help="add ParaThinker tokens and thought embeddings to a base checkpoint")
    p.add_argument("--model", required=True, help="base Hugging Face checkpoint directory (qwen2 or llama)")
    p.add_argument("--output", required=True, help="directory to write the ParaThinker checkpoint to")
    p.add_argument("--num-paths", type=int, default=8, help="N: adds <think1>..<thinkN> (default: 8)")
    p.add_argument("--max-segments", type=int, default=32, help="rows of each thought-embedding table (default: 32)")
    p.add_argument("--seg-init-std", type=float, default=0.0,
                   help="std of the thought-embedding init; 0 (default) = zeros: the model starts as the base model")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_prepare)

    d = subparsers.add_parser("data", help="multi-path training data tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    c = dsub.add_parser("check", help="validate a multi-path JSONL file (all errors, as file:line)")
    c.add_argument("file")
    c.add_argument("--model", help="ParaThinker checkpoint: checks the path count and reports token lengths")
    c.add_argument("--num-paths", type=int, help="largest allowed number of paths (default: the model's N)")
    c.add_argument("--max-length", type=int, default=PackConfig.max_length, help="report examples longer than this")
    c.set_defaults(func=_data_check)
    g = dsub.add_parser(
        "generate", help="sample multi-path training data from a teacher behind an OpenAI-compatible API",
        description="Sample --paths paths per problem from a teacher (vLLM, SGLang, a hosted API, parathinker "
        "serve), grade them, add a summary and write JSONL that `data check` and `train` accept. "
        "Resumable: rerun the same command after an interruption.",
    )
    g.add_argument("--base-url", action="append", dest="base_urls", metavar="URL",
                   help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1; repeat for replicas")
    add_dataclass_args(g, DataGenConfig)
    g.set_defaults(func=_data_generate)

    t = subparsers.add_parser("train", help="multi-path SFT of a prepared checkpoint (torchrun/accelerate ready)")
    t.add_argument("--model", required=True, help="ParaThinker checkpoint (from `parathinker prepare`)")
    t.add_argument("--data", required=True, help="multi-path JSONL (see docs/training.md)")
    t.add_argument("--output", required=True, help="run directory: checkpoint-N/, final model, metrics.jsonl")
    t.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue from the newest checkpoint in --output (or from CHECKPOINT)")
    add_dataclass_args(t, TrainConfig)
    add_dataclass_args(t, PackConfig)
    t.set_defaults(func=_train)


def _fail(e: Exception, args: argparse.Namespace) -> int:
    print(f"parathinker: error: {cli_message(str(e), getattr(args, FLAGS_DEST, {}))}", file=sys.stderr)
    return 2


def _prepare(args: argparse.Namespace) -> int:
    from .prepare import prepare

    try:
        r = prepare(args.model, args.output, num_paths=args.num_paths, max_segments=args.max_segments,
                    seg_init_std=args.seg_init_std, seed=args.seed)
    except ParaThinkerError as e:
        return _fail(e, args)
    added = f"added {len(r.added_tokens)} control tokens" if r.added_tokens else "control tokens already present"
    print(f"{r.output_dir}: {added}; embedding rows {r.vocab_rows[0]} -> {r.vocab_rows[1]}; "
          f"thought embeddings [{r.max_segments}, head_dim] ({r.seg_source})")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from .data import check_file

    try:
        tok = None
        max_paths = args.num_paths
        if args.model:
            import transformers

            from ..tokens import ControlTokens
            from .prepare import quiet_transformers, read_config

            read_config(Path(args.model))
            with quiet_transformers():
                tok = transformers.AutoTokenizer.from_pretrained(args.model)
            if max_paths is None:
                max_paths = ControlTokens.from_tokenizer(tok).max_paths
        records, errors = check_file(args.file, max_paths)
    except ParaThinkerError as e:
        return _fail(e, args)
    for e in errors:
        print(e)
    n_paths = [len(r.paths) for r in records]
    if records:
        print(f"{args.file}: {len(records)} valid examples, paths per example "
              f"min {min(n_paths)} / mean {statistics.mean(n_paths):.2f} / max {max(n_paths)}")
    if tok is not None and records:
        from ..prompting import PromptStyle
        from .collate import encode_records, full_length

        enc = encode_records(records, tok, PromptStyle.from_checkpoint(args.model))
        lens = sorted(full_length(e, PackConfig()) for e in enc)
        over = sum(n > args.max_length for n in lens)
        print(f"packed length (all paths): median {lens[len(lens) // 2]}, max {lens[-1]}; "
              f"{over} example(s) over --max-length {args.max_length} will be truncated")
    if errors:
        print(f"{args.file}: {len(errors)} problem(s)", file=sys.stderr)
        return 1
    if not records:
        print(f"parathinker: error: {args.file}: no examples (one JSON object per line: "
              "prompt, paths, summary, answer; see docs/training.md)", file=sys.stderr)
        return 1
    return 0


def _data_generate(args: argparse.Namespace) -> int:
    from .datagen import generate

    try:
        cfg = dataclass_from_args(DataGenConfig, args)
        stats, man = generate(cfg)
    except ParaThinkerError as e:
        return _fail(e, args)
    stats.render()
    print(f"{cfg.out}: {man['written']} examples; raw log {cfg.log_path}; manifest {cfg.manifest_path}")
    failed = stats.dropped.get("request failed", 0) + stats.dropped.get("summary request failed", 0)
    if failed:
        print(f"{failed} problem(s) lost a request after all retries; rerun the same command to ask again",
              file=sys.stderr)
    if man["written"] == 0:
        print("parathinker: error: no problem was kept (see the table for why)", file=sys.stderr)
        return 1
    return 0


def _train(args: argparse.Namespace) -> int:
    from .trainer import finished_run, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = dataclass_from_args(TrainConfig, args)
        pack = dataclass_from_args(PackConfig, args)
        done = finished_run(Path(args.output), cfg, pack) if args.resume else None
        if done is not None:
            print(f"{args.output}: this run finished at step {done} with these settings; --resume has nothing "
                  "to do (the model is unchanged; raise --max-steps or --epochs to train further)")
            return 0
        out = train(args.model, args.data, args.output, cfg, pack, resume=args.resume)
    except ParaThinkerError as e:
        return _fail(e, args)
    except KeyboardInterrupt:
        print(f"parathinker: interrupted; continue with the same command plus --resume "
              f"(checkpoints in {args.output})", file=sys.stderr)
        return 130
    print(f"trained model: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m parathinker.train.cli``), for torchrun and tests."""
    parser = Parser(prog="parathinker")
    register(parser.add_subparsers(dest="command", required=True))
    record_flags(parser)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
