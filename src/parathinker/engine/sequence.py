"""Per-request and per-sequence state of the engine (no model code here)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import torch

from ..layout import LayoutConfig
from ..params import ParallelParams, SamplingParams
from .block_manager import Run
from .detok import IncrementalDetokenizer

Role = Literal["path", "sample", "summary", "reprefill"]  # what a sequence is to its request


@dataclass
class RequestSpec:
    """One prompt to run. ``forced`` (scoring) gives the tokens to teacher-force instead of sampling."""

    prompt_ids: list[int]
    parallel: ParallelParams
    sampling: SamplingParams
    summary_prefix_ids: list[int] = field(default_factory=list)
    forced_paths: list[list[int]] | None = None  # bodies + own close token, per path
    forced_summary: list[int] | None = None  # summary body + </summary>
    # forced path bodies go in as one prefill chunk per path (their log-probs are not computed: NaN),
    # not token by token: builds long paths fast (benchmarks of the summary's time to first token)
    prefill_forced: bool = False

    @property
    def path_budget(self) -> int:
        """Most body tokens a path may have: the budget, or the longest forced body when scoring."""
        if self.forced_paths is not None:
            return max(len(p) for p in self.forced_paths) - 1  # each forced list ends with its close token
        return self.parallel.max_path_tokens


@dataclass(eq=False)
class Seq:
    """A sequence that decodes: a path, a plain sample, or a summary.

    It reads ``reads`` (runs shared with others, its own run last) and writes ``own``. ``pending``
    holds the tokens to feed in the next forward (sampled or forced, not yet in the cache);
    ``num_cached`` counts the tokens already in its own run, the layout turns it into positions.
    """

    req: Request
    role: Role
    index: int  # think index (paths, 1-based), sample number, or 0
    order: int  # 0-based order among the request's paths
    reads: list[Run]
    own: Run
    segment: int
    banned: torch.Tensor
    end_ids: frozenset[int]
    budget: int
    pending: list[int] = field(default_factory=list)
    pending_positions: list[int] | None = None  # explicit positions (re-prefill chunk)
    pending_segments: list[int] | None = None
    kinds: torch.Tensor | None = None  # layout kinds of the re-prefill chunk (its mask, built by the layout)
    num_cached: int = 0  # tokens already in its own run (the layout turns it into positions)
    body: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    forced: list[int] | None = None
    finished: bool = False
    finish_reason: str | None = None
    next_position: int | None = None  # re-prefill summary: continues after the packed sequence
    packed_len: int = 0  # re-prefill summary: length of the packed chunk
    end_logprob: float = float("nan")  # raw log-prob of the token that ended it
    sent: int = 0  # body tokens already reported in deltas (streamed requests)
    sent_finish: bool = False
    detok: IncrementalDetokenizer | None = None

    def finish(self, reason: str) -> None:
        self.finished = True
        self.finish_reason = reason


@dataclass(eq=False)
class Request:
    id: int
    spec: RequestSpec
    generator: torch.Generator
    prompt_run: Run | None = None
    prompt: str = ""  # the text its output carries
    stream: bool = False  # step() reports its tokens as deltas
    stream_paths: bool = True  # per step for its paths too (else at their first token and their end)
    need: int = 0  # worst-case pages (reserved on admission)
    phase: Literal["waiting", "paths", "summary", "done", "aborted", "failed"] = "waiting"
    seqs: list[Seq] = field(default_factory=list)
    summary: Seq | None = None
    cut: bool = False
    stats: dict[str, float] = field(
        default_factory=lambda: dict(prefill_tokens=0, path_tokens=0, summary_tokens=0, reprefill_tokens=0)
    )
    marks: dict[str, float] = field(default_factory=dict)

    @property
    def pp(self) -> ParallelParams:
        return self.spec.parallel

    @cached_property
    def layout(self) -> LayoutConfig:
        """The request's layout config (made once: the scheduler asks for it per token)."""
        return self.spec.parallel.layout

    @property
    def prompt_len(self) -> int:
        return len(self.spec.prompt_ids)

    @cached_property
    def stride(self) -> int:
        """Flat-position stride at inference: the longest a path can be (budget + both control tokens)."""
        return self.layout.flat_stride or self.spec.path_budget + 2

    def mark(self, name: str) -> None:
        self.marks[name] = time.perf_counter()
