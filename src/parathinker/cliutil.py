"""Build argparse options from config dataclasses, so the CLI cannot drift from the configs.

A field becomes ``--field-name`` (or ``metadata["flag"]``), with ``metadata["help"]`` as help
and the dataclass default as default (shown as ``metadata["default_text"]`` when given).
Validation stays in the dataclass's ``__post_init__``: the CLI constructs the config and prints
its ConfigError as one line.

``layered=True`` (per-request params whose defaults a checkpoint may override): an option not
typed is absent from the parsed namespace (``argparse.SUPPRESS``), so ``dataclass_from_args``
passes only what the user typed, and ``params.resolve`` fills the rest from the checkpoint, then
the library; the help says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's one error format: ``parathinker: error: ...`` on one line, exit 2."""

    def error(self, message: str) -> Any:  # argparse's own: the usage block, then "PROG: error: ..."
        self.exit(2, f"parathinker: error: {message} (see `{self.prog} --help`)\n")


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _base_type(tp: Any) -> Any:
    """``int | None`` -> int; ``Literal[...]`` kept; others unchanged."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _base_type(args[0])
        return str  # mixed unions (e.g. str | int) parse as str; __post_init__ converts
    return tp


def add_dataclass_args(
    parser: argparse.ArgumentParser | Any, cls: type, *, skip: tuple[str, ...] = (), layered: bool = False
) -> None:
    """Add one option per field of dataclass ``cls`` (fields in ``skip`` or with metadata cli=False excluded).

    ``layered``: untyped options stay unset and the help names the checkpoint as the first default."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__, (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else None)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("cli", True):
            continue
        tp = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        )
        help_ = f.metadata.get("help", "")
        shown = f.metadata.get("default_text", default)
        if tp is bool and default is not None:
            shown = "on" if default else "off"
        # one default per option: none shown for "unset" (None) or when the help already states it
        if layered:
            help_ += f" (default: the checkpoint's parathinker.json, else {shown if shown is not None else 'unset'})"
        elif shown is not None and "(default:" not in help_:
            help_ += f" (default: {shown})"
        help_ = help_.strip()
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS if layered else default, "help": help_}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            if typing.get_origin(tp) is typing.Literal:
                kwargs["choices"] = list(typing.get_args(tp))
                tp = type(kwargs["choices"][0])
            kwargs["type"] = tp if tp in (int, float, str) else str
        group.add_argument(_flag(f), **kwargs)


def dataclass_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """Construct ``cls`` from the parsed options named after its fields (plus ``overrides``); with
    ``layered`` options, only those the user typed are passed (the params remember them as set)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)


def parse_threads(text: str | int) -> int | str:
    """``--threads``: ``auto`` or a positive number (argparse ``type``: a bad value is one usage line)."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of threads or auto, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 or auto, got {n}")
    return n


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model, --device, --dtype, --threads: how a command loads its model (generate, serve)."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="HF checkpoint directory, or 'smollm2' (default: the bundled model)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    g.add_argument("--threads", default="auto", type=parse_threads,
                   help="torch CPU threads: a number, or auto (1 for models under 20M parameters, else torch's)")


FLAGS_DEST = "_option_flags"  # per (sub)command: option dest -> its flag, for cli_message


def record_flags(parser: argparse.ArgumentParser) -> None:
    """Let each (sub)command's parsed namespace carry its options' dest -> flag map (``cli_message``)."""
    flags = {}
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub in {id(p): p for p in a.choices.values()}.values():
                record_flags(sub)
        long = [s for s in a.option_strings if s.startswith("--")]
        if long and a.dest != "help":
            flags[a.dest] = long[0]
    parser.set_defaults(**{FLAGS_DEST: flags})


def cli_message(message: str, flags: dict[str, str]) -> str:
    """A library error as a command-line user reads it: the library names parameters as Python and
    the HTTP API do (``max_path_tokens``, ``num_paths=9``); the CLI names them by their options
    (``--max-path-tokens``, ``--paths 9``). ``flags``: the command's dest -> flag map (``record_flags``)."""
    for name, flag in sorted(flags.items(), key=lambda kv: -len(kv[0])):
        message = re.sub(rf"(?<![\w./-]){re.escape(name)}=(?=[^\s=])", f"{flag} ", message)
        if "_" in name:
            message = re.sub(rf"(?<![\w./-]){re.escape(name)}(?![\w/=-])", flag, message)
    return message
