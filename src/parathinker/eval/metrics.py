"""Metrics over sample records: pass@1, maj@k, tokens, latency, with bootstrap 95% intervals.

pass@1 of a cell (benchmark, method, P) = mean over problems of the fraction of that problem's
samples graded correct (the paper: 16 samples for small sets, 4 for MATH-500). The interval
resamples problems with replacement (``n_boot`` times, fixed seed). The average over benchmarks
is unweighted (as in the paper's tables); its interval resamples each benchmark independently.
maj@k: per problem, the answers of samples 0..k-1 are voted (equivalence-aware) and the winner
graded; k = the number of samples every problem of the cell has.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .grading import majority_vote
from .runlog import Record

Interval = tuple[float, float]


@dataclass(frozen=True)
class CellMetrics:
    """Metrics of one (benchmark, method, P) cell. Accuracies are in percent."""

    benchmark: str
    method: str
    paths: int
    problems: int
    samples: int  # samples per problem (the minimum over problems)
    pass1: float
    pass1_ci: Interval
    maj_k: int
    maj: float | None
    tokens_per_path: float
    total_tokens: float
    latency: float  # seconds per sample (one problem, one run)
    wall_time: float  # seconds of generate calls spent on the cell

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap_ci(groups: Sequence[np.ndarray], n_boot: int = 1000, seed: int = 0) -> Interval:
    """95% percentile interval of the mean over groups of each group's mean, resampled per group."""
    rng = np.random.default_rng(seed)
    stats = np.zeros(n_boot)
    for g in groups:
        idx = rng.integers(0, len(g), size=(n_boot, len(g)))
        stats += g[idx].mean(axis=1)
    stats /= len(groups)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def _by_problem(recs: Iterable[Record]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = defaultdict(list)
    for r in recs:
        out[str(r["id"])].append(r)
    for v in out.values():
        v.sort(key=lambda r: r["sample"])
    return out


def problem_accuracy(recs: Iterable[Record]) -> np.ndarray:
    """Per-problem fraction of correct samples (ordered by problem id)."""
    byp = _by_problem(recs)
    return np.array([np.mean([bool(r["correct"]) for r in byp[k]]) for k in sorted(byp)])


def maj_at_k(recs: Iterable[Record], k: int) -> float:
    """Percent of problems whose majority answer over samples 0..k-1 is correct."""
    byp = _by_problem(recs)
    wins = []
    for rs in byp.values():
        rs = rs[:k]
        v = majority_vote([r["answer"] for r in rs])
        wins.append(v.index is not None and bool(rs[v.index]["correct"]))
    return 100.0 * float(np.mean(wins))


def _mean(xs: Iterable[float]) -> float:
    a = [float(x) for x in xs]
    return float(np.mean(a)) if a else 0.0


def cell_metrics(records: Iterable[Record], n_boot: int = 1000, seed: int = 0) -> list[CellMetrics]:
    """One CellMetrics per (benchmark, method, P) present in ``records``."""
    cells: dict[tuple[str, str, int], list[Record]] = defaultdict(list)
    for r in records:
        cells[(r["benchmark"], r["method"], int(r["paths"]))].append(r)
    out = []
    for (bench, method, p), recs in sorted(cells.items()):
        acc = problem_accuracy(recs)
        k = min(len(v) for v in _by_problem(recs).values())
        out.append(CellMetrics(
            benchmark=bench, method=method, paths=p, problems=len(acc), samples=k,
            pass1=100.0 * float(acc.mean()),
            pass1_ci=tuple(100.0 * x for x in bootstrap_ci([acc], n_boot, seed)),  # type: ignore[arg-type]
            maj_k=k, maj=maj_at_k(recs, k) if k >= 2 else None,
            tokens_per_path=_mean(_mean(r["path_tokens"]) for r in recs),
            total_tokens=_mean(r["total_tokens"] for r in recs),
            latency=_mean(r["latency"] for r in recs),
            wall_time=sum(float(r["wall_time"]) / max(1, int(r.get("batch", 1))) for r in recs),
        ))
    return out


@dataclass(frozen=True)
class RowAverage:
    """A (method, P) row averaged over the benchmarks it covers (percent; unweighted)."""

    method: str
    paths: int
    benchmarks: tuple[str, ...]
    pass1: float
    pass1_ci: Interval
    maj: float | None
    tokens_per_path: float
    total_tokens: float
    latency: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def row_averages(records: Sequence[Record], cells: Sequence[CellMetrics], n_boot: int = 1000,
                 seed: int = 0) -> list[RowAverage]:
    """Average each (method, P) row over its benchmarks, with a jointly bootstrapped interval."""
    rows: dict[tuple[str, int], list[CellMetrics]] = defaultdict(list)
    for c in cells:
        rows[(c.method, c.paths)].append(c)
    recs_by: dict[tuple[str, str, int], list[Record]] = defaultdict(list)
    for r in records:
        recs_by[(r["benchmark"], r["method"], int(r["paths"]))].append(r)
    out = []
    for (method, p), cs in sorted(rows.items()):
        groups = [problem_accuracy(recs_by[(c.benchmark, method, p)]) for c in cs]
        lo, hi = bootstrap_ci(groups, n_boot, seed)
        majs = [c.maj for c in cs]
        out.append(RowAverage(
            method=method, paths=p, benchmarks=tuple(c.benchmark for c in cs),
            pass1=_mean(c.pass1 for c in cs), pass1_ci=(100.0 * lo, 100.0 * hi),
            maj=_mean(m for m in majs if m is not None) if all(m is not None for m in majs) else None,
            tokens_per_path=_mean(c.tokens_per_path for c in cs),
            total_tokens=_mean(c.total_tokens for c in cs),
            latency=_mean(c.latency for c in cs),
        ))
    return out
