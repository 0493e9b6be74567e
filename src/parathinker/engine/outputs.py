"""What the engine returns."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ..answers import last_boxed, majority_vote
from ..layout import PackedSequence

if TYPE_CHECKING:
    from .sequence import Request


@dataclass
class PathOutput:
    """One reasoning path (or one sample in sequential/majority mode).

    ``finish_reason``: "end" (it emitted an end token), "length" (hit max_path_tokens), or "cut"
    (closed by the termination policy while still running). ``token_ids`` exclude the control
    tokens; ``logprobs`` are the model's raw log-probabilities (temperature 1, no bans) of them.
    """

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str
    logprobs: list[float] = field(default_factory=list, repr=False)
    answer: str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class SummaryOutput:
    text: str  # forced prefix + generated text
    token_ids: list[int]  # generated tokens only
    finish_reason: str
    prefix: str = ""
    logprobs: list[float] = field(default_factory=list, repr=False)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class RequestOutput:
    """Result of one prompt: its paths, its summary (parathinker/reprefill) and the final answer.

    ``stats``: tokens run through the model per phase (``prefill_tokens`` = prompt tokens, run
    once; ``path_tokens``; ``summary_tokens``; ``reprefill_tokens``) and wall seconds per phase
    (``time_prefill``, ``time_paths``, ``time_summary``, ``time_total``).
    """

    prompt: str
    prompt_token_ids: list[int]
    mode: str
    paths: list[PathOutput]
    summary: SummaryOutput | None
    answer: str | None
    votes: dict[str, int] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class ScoreOutput:
    """Teacher-forced log-probabilities computed through the engine.

    ``token_logprobs[k]`` is log p(``packed.labels[k]`` | what token k sees), aligned with the
    layout module's packed sequence (NaN where the label is ignored), so it compares 1:1 with a
    trainer's per-token log-probs.
    """

    packed: PackedSequence
    token_logprobs: list[float]
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def path_logprobs(self) -> list[list[float]]:
        return [self.token_logprobs[a : b - 1] for a, b in self.packed.path_spans]

    @property
    def summary_logprobs(self) -> list[float]:
        if self.packed.summary_span is None:
            return []
        a, b = self.packed.summary_span
        return self.token_logprobs[a : b - 1]

    @property
    def total(self) -> float:
        return sum(x for x in self.token_logprobs if not math.isnan(x))


@dataclass
class RequestDelta:
    """What one ``Engine.step()`` produced for one part of one request (a stream's unit).

    ``part``/``index``: a path (its think index i, 1-based), a plain sample (its number, 1-based)
    or the summary (0). ``text`` is the new text of ``token_ids``; a part's pieces concatenated
    equal that part's final text (the summary's first piece carries its forced prefix, so they
    equal ``output.summary.text``). ``finish_reason`` is set on the delta where the part finished
    ("end", "length" or "cut"); ``finished``/``output`` on exactly one delta per request, its last.
    """

    request_id: int
    part: Literal["path", "sample", "summary"]
    index: int
    token_ids: list[int]
    text: str
    finish_reason: str | None = None
    finished: bool = False
    output: RequestOutput | None = None


def join_summary(prefix: str, text: str) -> str:
    """The summary as read: its forced prefix, a space where the generated text does not open with one."""
    return f"{prefix} {text}" if prefix and text and not text.startswith(" ") else prefix + text


def build_output(prompt: str, req: Request, decode: Callable[[Sequence[int]], str]) -> RequestOutput:
    """A finished request's ``RequestOutput``: texts decoded, answers extracted (majority: voted)."""
    pp = req.pp
    paths = [
        PathOutput(s.index, decode(s.body), list(s.body), s.finish_reason or "", list(s.logprobs))
        for s in req.seqs
    ]
    for p in paths:
        p.answer = last_boxed(p.text) or None  # an empty \boxed{} is no answer
    summary, votes = None, {}
    if req.summary is not None:
        s = req.summary
        prefix = pp.summary_prefix or ""
        text = join_summary(prefix, decode(s.body))
        summary = SummaryOutput(text, list(s.body), s.finish_reason or "", prefix, list(s.logprobs))
        answer = last_boxed(summary.text) or None
    elif pp.mode == "majority":
        answer, votes = majority_vote(p.answer for p in paths)
    else:
        answer = paths[0].answer
    stats = dict(req.stats)
    stats["num_paths"] = len(paths)
    stats["generated_tokens"] = sum(p.num_tokens for p in paths) + (summary.num_tokens if summary else 0)
    return RequestOutput(prompt, list(req.spec.prompt_ids), pp.mode, paths, summary, answer, votes, stats)
