"""Teacher traces and summaries: claims that verify, independent exploration, correct summaries."""

from __future__ import annotations

import random

from parathinker.tasks.pathfind.problem import generate, verify
from parathinker.tasks.pathfind.teacher import extract_boxed, majority, path_status, summarize, walk


def _problems(n, seed=0):
    rng = random.Random(seed)
    return [generate(rng) for _ in range(n)]


def test_a_trace_claims_success_exactly_when_its_answer_verifies():
    rng = random.Random(1)
    n_ok = n = 0
    for p in _problems(300):
        for _ in range(4):
            t = walk(p, rng, tries=4, commit=0.8)
            claims, ans = path_status(t.text)
            assert ans == t.answer == extract_boxed(t.text)
            assert claims == t.success == verify(p, ans)
            assert 1 <= t.tries_used <= 4
            words = t.text.split()
            assert words[0] == "T1" and words[1] == p.start
            # every step of every try follows an edge of the prompt (the guess may not)
            edges = set(p.edges)
            steps = t.text.split("\\boxed{")[0].split()
            for a, b in zip(steps, steps[1:]):
                if a.isdigit() and b.isdigit():
                    assert (a, b) in edges
            n_ok += t.success
            n += 1
    assert 0.2 < n_ok / n < 0.6  # a single path often fails


def test_paths_of_one_problem_explore_differently():
    p = _problems(1, seed=4)[0]
    rng = random.Random(0)
    texts = {walk(p, rng, tries=4, commit=0.8).text for _ in range(30)}
    assert len(texts) > 5


def test_commitment_makes_more_tries_worth_less_than_more_paths():
    rng = random.Random(2)
    probs = _problems(300, seed=2)
    long_one = sum(walk(p, rng, tries=16, commit=0.8).success for p in probs)
    four = sum(any(walk(p, rng, tries=4, commit=0.8).success for _ in range(4)) for p in probs)
    assert four > long_one + 30


def test_summary_answer_is_correct_whenever_some_path_succeeded():
    rng = random.Random(3)
    seen_fail = seen_ok = 0
    for p in _problems(300, seed=3):
        traces = [walk(p, rng, tries=4, commit=0.8) for _ in range(rng.randint(1, 8))]
        body, ans = summarize([t.text for t in traces])
        assert extract_boxed(body) == ans
        assert body.startswith("By analyzing multiple reasoning processes above")
        if any(t.success for t in traces):
            assert verify(p, ans)
            seen_ok += 1
        else:
            assert not verify(p, ans)
            assert ans == majority([t.answer for t in traces])  # best attempt: the most common guess
            seen_fail += 1
    assert seen_ok and seen_fail


def test_summary_of_cut_paths_and_majority_ties():
    assert summarize(["T1 11 12", "T1 11 13 dead T2"], prefix="")[1] == "none"
    assert summarize(["T1 11 12 found \\boxed{ 11 12 }"], prefix=None)[0] == "\\boxed{ 11 12 }"
    assert majority(["a", "b", "b", None, "a"]) == "a"  # tie: the earliest
    assert majority([None, None]) is None
    assert extract_boxed("x \\boxed{ 1 2 } y \\boxed{  3  4 }") == "3 4"
    assert extract_boxed("\\boxed{ 1 2") is None
