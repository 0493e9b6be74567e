"""``parathinker task ...``: the bundled task's commands, for the main CLI to mount."""

from __future__ import annotations


def register(subparsers) -> None:
    """Add ``task`` (make-data, make-tokenizer, stats, sample, check) to the main CLI's subparsers.

    Every leaf sets ``func=<callable(args) -> int>``.
    """
    from .pathfind.cli import add_commands

    p = subparsers.add_parser("task", help="the bundled path-finding task: data, tokenizer, statistics")
    sub = p.add_subparsers(dest="task_command", required=True)
    add_commands(sub)
