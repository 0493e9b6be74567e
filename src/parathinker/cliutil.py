"""Build argparse options from config dataclasses, so the CLI cannot drift from the configs.

A field becomes ``--field-name`` (or ``metadata["flag"]``), with ``metadata["help"]`` as help
and the dataclass default as default. Validation stays in the dataclass's ``__post_init__``:
the CLI constructs the config and prints its ConfigError as one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


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


def add_dataclass_args(parser: argparse.ArgumentParser | Any, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """Add one option per field of dataclass ``cls`` (fields in ``skip`` or with metadata cli=False excluded)."""
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
        kwargs: dict[str, Any] = {"dest": f.name, "default": default}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["help"] = help_
        else:
            if typing.get_origin(tp) is typing.Literal:
                kwargs["choices"] = list(typing.get_args(tp))
                tp = type(kwargs["choices"][0])
            kwargs["type"] = tp if tp in (int, float, str) else str
            kwargs["help"] = f"{help_} (default: {default})" if help_ else f"default: {default}"
        group.add_argument(_flag(f), **kwargs)


def dataclass_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """Construct ``cls`` from the parsed options named after its fields (plus ``overrides``)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)
