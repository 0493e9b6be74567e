"""Counters of a ``data generate`` run and their final table (rich) and manifest form."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = (10, 50, 90, 99)


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


@dataclass
class GenStats:
    """Problems in / kept / dropped by reason, paths graded / correct / truncated / dropped, lengths, usage."""

    paths_per_problem: int
    length_unit: str = "characters"
    problems_in: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    paths_graded: int = 0
    paths_correct: int = 0
    paths_truncated: int = 0
    path_drops: Counter = field(default_factory=Counter)
    kept_paths: list[int] = field(default_factory=list)
    kept_correct: int = 0
    lengths: list[int] = field(default_factory=list)
    responses: int = 0
    resumed_responses: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def drop_path(self, reason: str) -> None:
        self.path_drops[reason] += 1

    def add_path(self, correct: bool, truncated: bool) -> None:
        self.paths_graded += 1
        self.paths_correct += bool(correct)
        self.paths_truncated += bool(truncated)

    def add_usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.responses += 1
        self.prompt_tokens += int(prompt_tokens or 0)
        self.completion_tokens += int(completion_tokens or 0)

    def keep(self, n_paths: int, correct: int, lengths: list[int]) -> None:
        self.kept += 1
        self.kept_paths.append(n_paths)
        self.kept_correct += correct
        self.lengths.extend(lengths)

    def as_dict(self) -> dict[str, Any]:
        """The counts as plain JSON values (the manifest's ``counts``)."""
        lens = sorted(self.lengths)
        kp = self.kept_paths
        return {
            "problems_in": self.problems_in, "kept": self.kept, "dropped": dict(sorted(self.dropped.items())),
            "paths_graded": self.paths_graded, "paths_correct": self.paths_correct,
            "correct_path_rate": round(self.paths_correct / self.paths_graded, 4) if self.paths_graded else None,
            "paths_truncated": self.paths_truncated, "paths_dropped": dict(sorted(self.path_drops.items())),
            "paths_written": sum(kp), "paths_per_kept_problem": {
                "min": min(kp) if kp else 0, "mean": round(sum(kp) / len(kp), 3) if kp else 0.0,
                "max": max(kp) if kp else 0},
            "path_length": {"unit": self.length_unit, **{f"p{q}": percentile(lens, q) for q in PERCENTILES},
                            "max": lens[-1] if lens else 0},
            "teacher_responses": self.responses, "responses_from_log": self.resumed_responses,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
        }

    def render(self, console: Any = None) -> None:
        """Print the final table."""
        from rich.console import Console
        from rich.table import Table

        d = self.as_dict()
        t = Table(title="data generate", show_header=False)
        t.add_column(style="bold")
        t.add_column(justify="right")
        t.add_row("problems in", str(d["problems_in"]))
        t.add_row("kept", str(d["kept"]))
        for reason, n in d["dropped"].items():
            t.add_row(f"  dropped: {reason}", str(n))
        rate = d["correct_path_rate"]
        t.add_row("paths graded / correct", f"{d['paths_graded']} / {d['paths_correct']}"
                  + (f" ({100 * rate:.1f}%)" if rate is not None else ""))
        t.add_row("paths truncated", str(d["paths_truncated"]))
        for reason, n in d["paths_dropped"].items():
            t.add_row(f"  paths dropped: {reason}", str(n))
        pp = d["paths_per_kept_problem"]
        t.add_row("paths per kept problem", f"min {pp['min']} / mean {pp['mean']:.2f} / max {pp['max']}")
        pl = d["path_length"]
        t.add_row(f"path length ({pl['unit']})",
                  " / ".join(f"p{q} {pl[f'p{q}']}" for q in PERCENTILES) + f" / max {pl['max']}")
        t.add_row("teacher responses (from the log)", f"{d['teacher_responses']} ({d['responses_from_log']})")
        t.add_row("teacher tokens: prompt / completion", f"{d['prompt_tokens']} / {d['completion_tokens']}")
        t.add_row("time", f"{self.seconds:.1f} s")
        (console or Console()).print(t)
