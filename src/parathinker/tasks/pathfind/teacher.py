"""Programmatic teacher: random-walk search traces with a budget of tries, and a summary.

A trace (one reasoning path) is a series of tries. Each try walks from the start, taking a
uniformly random edge out of the current node, until it reaches the goal (``found``) or a
node with no way out (``dead``). After ``tries`` dead ends the walker gives up and guesses:
the route of its last try with the goal appended (a confident wrong answer, as a stuck
reasoning chain gives). With ``commit`` > 0 a later try repeats the first try's first
move with that chance: the walker sticks to its early choice. Every path body ends with its answer in ``\\boxed{ ... }``::

    T1 41 77 23 dead T2 41 18 60 95 found \\boxed{ 41 18 60 95 }
    T1 41 77 23 dead T2 41 77 52 dead T3 41 30 dead guess \\boxed{ 41 30 95 }

A walk commits at every fork, so one path often fails (tunnel vision), while independent
paths explore differently. The summary reads all paths: it states the route of a path that
found the goal, otherwise the most common guess (the best attempt it can judge).

All text is canonical: tokens joined by single spaces, so word-level tokenization round-trips.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from ...answers import last_boxed
from ...prompting import RELEASED_SUMMARY_PREFIX
from .problem import Problem

BOX_OPEN, BOX_CLOSE = "\\boxed{", "}"
FOUND, DEAD, GUESS = "found", "dead", "guess"
MAX_TRIES = 9  # try markers T1..T9 are in the vocabulary


def try_token(k: int) -> str:
    """Marker that opens try ``k`` (1-based)."""
    return f"T{k}"


def boxed(answer: str) -> str:
    return f"{BOX_OPEN} {answer} {BOX_CLOSE}"


@dataclass(frozen=True)
class Trace:
    """One teacher path: its text (the path body), its answer and whether it reached the goal."""

    text: str
    answer: str
    success: bool
    tries_used: int


def walk(problem: Problem, rng: random.Random, tries: int, commit: float = 0.0) -> Trace:
    """One search trace with at most ``tries`` tries; ``rng`` drives every choice.

    ``commit``: the chance that a later try repeats the first try's first move instead of
    choosing afresh (early commitment: more tries in one path help less than more paths).
    """
    if tries < 1:
        raise ValueError(f"tries must be >= 1, got {tries}")
    if not 0 <= commit <= 1:
        raise ValueError(f"commit must be in [0, 1], got {commit}")
    kids = problem.children
    words: list[str] = []
    route: list[str] = []
    first_move = None
    for k in range(1, tries + 1):
        node = problem.start
        route = [node]
        words += [try_token(k), node]
        while node != problem.goal and kids.get(node):
            if node == problem.start and first_move is not None and rng.random() < commit:
                node = first_move
            else:
                node = rng.choice(kids[node])
            if first_move is None:
                first_move = node
            route.append(node)
            words.append(node)
        if node == problem.goal:
            answer = " ".join(route)
            words += [FOUND, boxed(answer)]
            return Trace(" ".join(words), answer, True, k)
        words.append(DEAD)
    answer = " ".join([*route, problem.goal])
    words += [GUESS, boxed(answer)]
    return Trace(" ".join(words), answer, False, tries)


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (stripped), or None."""
    box = last_boxed(text)
    return " ".join(box.split()) if box is not None else None


def path_status(text: str) -> tuple[bool, str | None]:
    """(claims success, claimed answer) of a path body; a cut-off path claims nothing."""
    ans = extract_boxed(text)
    words = text.split()
    success = (
        ans is not None
        and FOUND in words
        and words.index(FOUND) < len(words) - 1
        and (words[words.index(FOUND) + 1] == BOX_OPEN)
    )
    return success, ans


def summarize(paths: list[str], prefix: str | None = RELEASED_SUMMARY_PREFIX) -> tuple[str, str]:
    """(summary body, its answer) from path bodies, judged from their text alone.

    The answer is that of the first path that says ``found``; otherwise the most common
    guess (ties: the earliest); ``none`` when no path states an answer (all were cut off).
    The body starts with ``prefix`` (the engine forces the released one by default).
    """
    claims = [path_status(p) for p in paths]
    found = [a for ok, a in claims if ok and a]
    if found:
        answer = found[0]
    else:
        guesses = [a for _, a in claims if a]
        answer = Counter(guesses).most_common(1)[0][0] if guesses else "none"
    body = boxed(answer)
    return (f"{prefix} {body}" if prefix else body), answer


def majority(answers: list[str | None]) -> str | None:
    """Majority vote over stated answers (None = no answer, does not vote); ties: earliest."""
    votes = [a for a in answers if a]
    return Counter(votes).most_common(1)[0][0] if votes else None
