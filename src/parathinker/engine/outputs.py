"""What the engine returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..layout import PackedSequence


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
