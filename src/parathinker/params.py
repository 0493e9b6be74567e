"""Per-request parameters: how to sample, and how to think in parallel. The CLI is built from these."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from .errors import ConfigError
from .layout import LayoutConfig

T = TypeVar("T")


def _track_set_fields(cls: type[T]) -> type[T]:
    """Make ``cls`` remember which fields its caller set (``set_fields``), so that a checkpoint's
    defaults fill only the others (``resolve``).

    A field counts as set when it was passed to the constructor. ``dataclasses.replace`` passes
    every field again: there the fields set on the original stay set, and a changed field counts as
    set when its new value differs from the library default (replacing an unset field with exactly
    the library default cannot be told apart from leaving it: construct the params anew for that).
    """
    init = cls.__init__
    names = [f.name for f in dataclasses.fields(cls) if f.init and f.name != "_set"]  # type: ignore[arg-type]
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        given = set(names[: len(args)]) | (kwargs.keys() - {"_set"})
        carried = kwargs.get("_set")
        if carried is not None:  # dataclasses.replace
            given = set(carried) | {n for n in given if getattr(self, n) != defaults[n]}
        object.__setattr__(self, "_set", frozenset(given))

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


def _set_field() -> Any:
    return field(default=None, repr=False, compare=False, metadata={"cli": False})


def set_fields(params: object) -> frozenset[str]:
    """The fields of a ``SamplingParams`` / ``ParallelParams`` that its caller set."""
    return getattr(params, "_set", frozenset())


def resolve(cls: type[T], user: T | None, checkpoint: Mapping[str, Any] | None = None) -> T:
    """THE precedence rule of every entry point (Python, ``generate``, ``eval``): what the user set
    > the checkpoint's ``parathinker.json`` > the library default.

    ``user``: params built by the caller (only the fields it set count; None: nothing set);
    ``checkpoint``: the checkpoint's defaults for ``cls`` (a dict of field values). The result
    counts the checkpoint's and the user's fields as set, so resolving it again changes nothing.
    """
    values: dict[str, Any] = dict(checkpoint or {})
    unknown = values.keys() - {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if unknown:
        from .errors import CheckpointError

        raise CheckpointError(f"parathinker.json: unknown {cls.__name__} field(s) {sorted(unknown)}")
    if user is not None:
        values.update({k: getattr(user, k) for k in set_fields(user)})
    return cls(**values)


Mode = Literal["parathinker", "sequential", "majority", "reprefill"]
MODES: tuple[str, ...] = ("parathinker", "sequential", "majority", "reprefill")


@_track_set_fields
@dataclass
class SamplingParams:
    """How tokens are drawn. temperature 0 is greedy; a seed makes a request reproducible."""

    temperature: float = field(default=0.6, metadata={"help": "0 = greedy"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling mass, 1 = off"})
    top_k: int = field(default=0, metadata={"help": "keep the k most likely tokens, 0 = off"})
    seed: int | None = field(default=None, metadata={"help": "seed for reproducible sampling"})
    ignore_eos: bool = field(default=False, metadata={"help": "benchmarking: EOS does not end plain samples"})
    _set: frozenset[str] | None = _set_field()  # the fields the caller set (see resolve)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = off), got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@_track_set_fields
@dataclass
class ParallelParams:
    """How a request thinks: how many paths, when thinking stops, budgets, and the mode.

    ``termination``: "first" (stop when one path ends; default, best in the paper), "half",
    "last", or a number k of finished paths. Paths still running are closed with their own
    ``</think i>``. ``mode``: "parathinker" (paths + summary over their KV), "sequential" (one
    plain path), "majority" (num_paths plain samples, answers voted), "reprefill" (like
    parathinker but the summary recomputes the packed sequence: the paper's baseline).
    """

    num_paths: int = field(default=8, metadata={"flag": "--paths", "help": "number of parallel paths P"})
    termination: str = field(default="first", metadata={"help": "first | half | last | k (paths that must finish)"})
    max_path_tokens: int = field(default=16384, metadata={"help": "token budget of each path"})
    summary_max_tokens: int = field(default=1024, metadata={"help": "token budget of the summary"})
    mode: Mode = field(default="parathinker", metadata={"help": "parathinker | sequential | majority | reprefill"})
    summary_prefix: str | None = field(
        default=None,
        metadata={"help": "text forced after <summary> ('' for none)",
                  "default_text": "the checkpoint's summary_prefix, else the released one"},
    )
    flat_positions: bool = field(default=False, metadata={"help": "ablation: path k at L + k*budget + t"})
    thought_embeddings: bool = field(default=True, metadata={"help": "ablation: --no-thought-embeddings sets all segment ids to 0"})
    flat_stride: int | None = field(default=None, metadata={"help": "flat positions: slot per path", "default_text": "budget + 2"})
    _set: frozenset[str] | None = _set_field()  # the fields the caller set (see resolve)

    def __post_init__(self) -> None:
        if self.num_paths < 1:
            raise ConfigError(f"num_paths must be >= 1, got {self.num_paths}")
        if self.max_path_tokens < 1:
            raise ConfigError(f"max_path_tokens must be >= 1, got {self.max_path_tokens}")
        if self.summary_max_tokens < 1:
            raise ConfigError(f"summary_max_tokens must be >= 1, got {self.summary_max_tokens}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        self.termination = str(self.termination).strip().lower()
        if self.termination not in ("first", "half", "last"):
            try:
                k = int(self.termination)
            except ValueError:
                raise ConfigError(
                    f"termination must be first, half, last or a number of paths, got {self.termination!r}"
                ) from None
            if not 1 <= k <= self.num_paths:
                raise ConfigError(f"termination={k} needs {k} finished paths, more than num_paths={self.num_paths}: "
                                  f"give a number from 1 to {self.num_paths}, or first, half or last")

    @property
    def finish_quorum(self) -> int:
        """How many paths must end before thinking stops."""
        p = self.num_paths
        return {"first": 1, "half": (p + 1) // 2, "last": p}.get(self.termination) or int(self.termination)

    @property
    def layout(self) -> LayoutConfig:
        return LayoutConfig(self.flat_positions, self.thought_embeddings, self.flat_stride)

    @property
    def paths_per_request(self) -> int:
        return 1 if self.mode == "sequential" else self.num_paths
