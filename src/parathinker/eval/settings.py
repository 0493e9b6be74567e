"""What an evaluation run is: the settings that fix its results, and the plan of what to run.

``EvalSettings`` must stay the same for the life of an output folder (a rerun with different
sampling or budgets would mix incomparable samples; ``run.json`` guards it). ``RunPlan`` may
grow between reruns (more benchmarks, methods, P values, samples).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..params import ParallelParams, SamplingParams

# method name -> engine mode. "sequential-long" is one path with the paper's longer budget.
# Follow the engine's default summary prefix, whatever it is.
_DEFAULT_PREFIX = next(f.default for f in dataclasses.fields(ParallelParams) if f.name == "summary_prefix")

METHOD_MODES: dict[str, str] = {
    "sequential": "sequential",
    "sequential-long": "sequential",
    "majority": "majority",
    "parathinker": "parathinker",
    "reprefill": "reprefill",
}
METHODS: tuple[str, ...] = tuple(METHOD_MODES)
SINGLE_PATH_METHODS = ("sequential", "sequential-long")


def vote_method(k: int) -> str:
    """Label of the row "k ParaThinker runs, answers majority-voted"."""
    return f"parathinker+maj{k}"


@dataclass(frozen=True)
class EvalSettings:
    """Sampling, budgets and prompt of a run (see module doc: fixed per output folder)."""

    model: str = ""
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    seed: int = 0
    max_path_tokens: int = 16384
    summary_max_tokens: int = 1024
    termination: str = "first"
    summary_prefix: str | None = _DEFAULT_PREFIX  # type: ignore[assignment]
    flat_positions: bool = False
    thought_embeddings: bool = True
    sequential_max_tokens: int | None = None
    prompt_template: str = "{problem}"

    def __post_init__(self) -> None:
        if "{problem}" not in self.prompt_template:
            raise ConfigError("--prompt-template must contain {problem}")
        if self.sequential_max_tokens is not None and self.sequential_max_tokens < 1:
            raise ConfigError(f"--sequential-max-tokens must be >= 1, got {self.sequential_max_tokens}")
        self.sampling(0)  # let the engine's params validate the values now, not mid-run

    @property
    def long_budget(self) -> int:
        """Budget of ``sequential-long``: given, else twice the per-path budget (paper: 32K vs 16K)."""
        return self.sequential_max_tokens or 2 * self.max_path_tokens

    def sampling(self, seed: int) -> SamplingParams:
        """SamplingParams for one run with ``seed``."""
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=seed)

    def parallel(self, method: str, num_paths: int) -> ParallelParams:
        """ParallelParams of ``method`` at P = ``num_paths``.

        Majority voting waits for all its samples (termination "last"); the other methods use
        the configured termination (First-Finish by default).
        """
        base = method.split("+", 1)[0]
        mode = METHOD_MODES[base]
        if base in SINGLE_PATH_METHODS:
            num_paths = 1
        budget = self.long_budget if base == "sequential-long" else self.max_path_tokens
        return ParallelParams(
            num_paths=num_paths,
            mode=mode,  # type: ignore[arg-type]
            termination="last" if mode == "majority" else (self.termination if num_paths > 1 else "first"),
            max_path_tokens=budget,
            summary_max_tokens=self.summary_max_tokens,
            summary_prefix=self.summary_prefix,
            flat_positions=self.flat_positions,
            thought_embeddings=self.thought_embeddings,
        )

    def prompt(self, problem: str) -> str:
        """The user prompt for a problem (the engine applies the chat format)."""
        return self.prompt_template.replace("{problem}", problem)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunPlan:
    """What to run: benchmarks x methods x P x samples, optionally voted, limited and sharded."""

    benchmarks: tuple[str, ...]
    methods: tuple[str, ...]
    paths: tuple[int, ...] = (1,)
    samples: int = 1
    vote: int = 0
    limit: int | None = None
    shard: tuple[int, int] = (0, 1)
    batch_size: int = 1
    save_text: bool = False
    tunnel_prefixes: tuple[int, ...] = field(default=(100, 200, 400, 800, 1600))

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHOD_MODES]
        if bad:
            raise ConfigError(f"unknown method {bad[0]!r}: use {', '.join(METHODS)}")
        if not self.methods and not self.vote:
            raise ConfigError("--method is empty")
        if not self.paths or any(p < 1 for p in self.paths):
            raise ConfigError(f"--paths must be positive integers, got {list(self.paths)}")
        if self.samples < 1:
            raise ConfigError(f"--samples must be >= 1, got {self.samples}")
        if self.vote < 0 or self.vote == 1:
            raise ConfigError(f"--vote must be 0 (off) or >= 2, got {self.vote}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        i, n = self.shard
        if not (n >= 1 and 0 <= i < n):
            raise ConfigError(f"--shard i/n needs 0 <= i < n, got {i}/{n}")
        if not 1 <= self.batch_size <= 10000:
            raise ConfigError(f"--batch-size must be within 1..10000, got {self.batch_size}")
        if any(p < 1 for p in self.tunnel_prefixes):
            raise ConfigError(f"--tunnel-prefixes must be positive, got {list(self.tunnel_prefixes)}")

    def cells(self) -> list[tuple[str, int]]:
        """(method label, P) rows to run; single-path methods appear once with P = 1."""
        out: list[tuple[str, int]] = []
        for m in self.methods:
            if m in SINGLE_PATH_METHODS:
                out.append((m, 1))
            else:
                out.extend((m, p) for p in self.paths)
        if self.vote:
            out.extend((vote_method(self.vote), p) for p in self.paths)
        return out

    def log_name(self) -> str:
        i, n = self.shard
        return "samples.jsonl" if n == 1 else f"samples.shard{i}of{n}.jsonl"


def check_termination(plan: RunPlan, settings: EvalSettings) -> None:
    """``--termination k`` waits for k finished paths: every P of ``--paths`` that a method thinking in
    parallel runs at must have at least k, checked before the model is loaded or a sample is drawn."""
    try:
        k = int(settings.termination)
    except ValueError:
        return  # first / half / last fit any P; other words fail in ParallelParams
    uses = [m for m in plan.methods if METHOD_MODES[m] in ("parathinker", "reprefill")]
    if plan.vote:
        uses.append(vote_method(plan.vote))
    small = sorted({p for p in plan.paths if p < k})
    if uses and small:
        raise ConfigError(
            f"--termination {k} needs {k} finished paths, but --paths has P={', '.join(map(str, small))} "
            f"(for --method {','.join(uses)}): lower --termination or drop those P from --paths"
        )


def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)`` with a ConfigError naming the option on bad input."""
    try:
        vals = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ConfigError(f"{what} must be a comma-separated list of integers, got {text!r}") from None
    if not vals:
        raise ConfigError(f"{what} is empty")
    return vals


def parse_shard(text: str) -> tuple[int, int]:
    """``"1/4"`` -> ``(1, 4)`` (shards are numbered from 0)."""
    try:
        i, n = (int(t) for t in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


def check_run_settings(out_dir: Path, settings: EvalSettings) -> None:
    """Write ``run.json`` on the first run; on a rerun over logged samples, refuse settings that differ."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "run.json"
    new = settings.to_json()
    # a folder without a single record (e.g. a start that failed) holds nothing to mix with: its
    # run.json is rewritten, so the corrected command runs in the same --out
    has_records = any(p.stat().st_size > 0 for p in out_dir.glob("*.jsonl"))
    if path.exists() and has_records:
        old = json.loads(path.read_text())
        diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        if diff:
            what = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
            raise ConfigError(f"{out_dir} holds a run with other settings ({what}); use another --out")
        return
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(new, indent=2) + "\n")
    os.replace(tmp, path)  # atomic: shards starting together never see half a file
