"""Per-request parameters: how to sample, and how to think in parallel. The CLI is built from these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError
from ..layout import LayoutConfig

Mode = Literal["parathinker", "sequential", "majority", "reprefill"]
MODES: tuple[str, ...] = ("parathinker", "sequential", "majority", "reprefill")


@dataclass
class SamplingParams:
    """How tokens are drawn. temperature 0 is greedy; a seed makes a request reproducible."""

    temperature: float = field(default=0.6, metadata={"help": "0 = greedy"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling mass, 1 = off"})
    top_k: int = field(default=0, metadata={"help": "keep the k most likely tokens, 0 = off"})
    seed: int | None = field(default=None, metadata={"help": "seed for reproducible sampling"})
    ignore_eos: bool = field(default=False, metadata={"help": "benchmarking: EOS does not end plain samples"})

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
        metadata={"help": "text forced after <summary> ('' for none; default: the model's, else the released one)"},
    )
    flat_positions: bool = field(default=False, metadata={"help": "ablation: path k at L + k*budget + t"})
    thought_embeddings: bool = field(default=True, metadata={"help": "ablation: --no-thought-embeddings sets all segment ids to 0"})
    flat_stride: int | None = field(default=None, metadata={"help": "flat positions: slot per path (default: budget + 2)"})

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
                raise ConfigError(f"termination k={k} must be within 1..num_paths ({self.num_paths})")

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
