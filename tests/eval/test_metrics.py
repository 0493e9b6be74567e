"""Metrics against hand-computed values and a brute-force bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from parathinker.eval.metrics import bootstrap_ci, cell_metrics, maj_at_k, problem_accuracy, row_averages


def _rec(bench: str, pid: str, sample: int, answer: str | None, gold: str, method: str = "parathinker",
         paths: int = 2, tokens: tuple[int, ...] = (10, 20), summary: int = 5, latency: float = 1.0) -> dict:
    return {"benchmark": bench, "id": pid, "method": method, "paths": paths, "sample": sample,
            "answer": answer, "gold": gold, "correct": answer == gold, "path_tokens": list(tokens),
            "summary_tokens": summary, "total_tokens": sum(tokens) + summary, "latency": latency,
            "wall_time": latency, "batch": 1}


def test_pass1_is_mean_over_problems_of_mean_over_samples() -> None:
    # problem a: 1 of 4 right; problem b: 4 of 4 right -> (0.25 + 1) / 2
    recs = [_rec("x", "a", s, "1" if s == 0 else "2", "1") for s in range(4)]
    recs += [_rec("x", "b", s, "5", "5") for s in range(4)]
    [c] = cell_metrics(recs, n_boot=200)
    assert c.pass1 == pytest.approx(62.5)
    assert (c.problems, c.samples) == (2, 4)
    assert c.tokens_per_path == 15 and c.total_tokens == 35 and c.latency == 1.0
    assert c.pass1_ci[0] <= c.pass1 <= c.pass1_ci[1]


def test_maj_at_k_votes_equivalent_answers() -> None:
    # a: answers 0.5, 1/2, 3 -> "0.5" group wins (2 of 3), gold 1/2 -> right
    recs = [_rec("x", "a", 0, "0.5", r"\frac{1}{2}"), _rec("x", "a", 1, r"\frac{1}{2}", r"\frac{1}{2}"),
            _rec("x", "a", 2, "3", r"\frac{1}{2}")]
    recs[0]["correct"] = True  # graded by math-verify in real runs
    # b: 7, 8, 8 -> 8 wins, gold 7 -> wrong although pass@1 > 0
    recs += [_rec("x", "b", 0, "7", "7"), _rec("x", "b", 1, "8", "7"), _rec("x", "b", 2, "8", "7")]
    assert maj_at_k(recs, 3) == 50.0
    assert maj_at_k(recs, 1) == 100.0  # k=1: sample 0 alone, right on both


def test_maj_at_1_is_sample_zero() -> None:
    recs = [_rec("x", "a", 1, "2", "1"), _rec("x", "a", 0, "1", "1")]
    assert maj_at_k(recs, 1) == 100.0
    assert maj_at_k(recs, 2) == 100.0  # tie 1 vs 2: sample 0 (earliest) wins


def test_bootstrap_matches_bruteforce_resampling() -> None:
    acc = np.array([0.0, 0.5, 1.0, 1.0, 0.25])
    lo, hi = bootstrap_ci([acc], n_boot=4000, seed=3)
    rng = np.random.default_rng(7)
    means = [rng.choice(acc, size=len(acc), replace=True).mean() for _ in range(4000)]
    blo, bhi = np.percentile(means, [2.5, 97.5])
    assert lo == pytest.approx(blo, abs=0.04) and hi == pytest.approx(bhi, abs=0.04)
    assert bootstrap_ci([acc], n_boot=500, seed=1) == bootstrap_ci([acc], n_boot=500, seed=1)  # seeded
    assert bootstrap_ci([np.ones(5)], n_boot=100) == (1.0, 1.0)


def test_row_average_is_unweighted_over_benchmarks() -> None:
    recs = [_rec("big", str(i), 0, "1", "1") for i in range(9)] + [_rec("big", "9", 0, "2", "1")]
    recs += [_rec("small", "0", 0, "2", "1")]
    cells = cell_metrics(recs, n_boot=100)
    [row] = row_averages(recs, cells, n_boot=100)
    assert row.pass1 == pytest.approx((90.0 + 0.0) / 2)
    assert row.benchmarks == ("big", "small")
    assert row.maj is None  # one sample per problem: no maj@k


def test_problem_accuracy_orders_by_id() -> None:
    recs = [_rec("x", "b", 0, "1", "1"), _rec("x", "a", 0, "2", "1")]
    assert list(problem_accuracy(recs)) == [0.0, 1.0]
