"""Grading: pull the final answer out of model text, decide if it equals the gold, vote.

Extraction order (``extract_answer``), first hit wins:
  1. ``boxed``: the last ``\\boxed{...}`` or ``\\fbox{...}`` (nested braces balanced; also the
     brace-less ``\\boxed 5``). This is the answer the paper grades.
  2. ``phrase``: the last "answer is X" / "answer: X" (X up to the end of the sentence/line),
     covers models that state the answer without a box (and the released summary prefix
     "The final answer is").
  3. ``number``: the last number in the text (integers, decimals, fractions a/b, with sign).
A text with none of these has no answer (graded wrong).

Equivalence (``is_equivalent``) uses math-verify: the gold is wrapped as ``$gold$`` (bare LaTeX
such as ``\\sqrt{12}``, ``(1,2)`` or ``C`` does not parse otherwise) and the prediction as
``\\boxed{pred}``. When math-verify finds nothing to compare on either side, the normalised
strings are compared instead, so text answers (``\\text{Evelyn}`` vs ``Evelyn``) still grade.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..answers import all_boxed, last_boxed  # noqa: F401 - re-exported for eval users

_PHRASE = re.compile(r"answer\s*(?:is|:|=)\s*(?:\$\s*)?(.+?)(?:\$|\.\s|\.$|\n|$)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+)?")


@dataclass(frozen=True)
class Extraction:
    """The answer found in a text (``None`` if none) and which rule found it."""

    answer: str | None
    source: str  # "boxed" | "phrase" | "number" | "none"


def extract_answer(text: str | None) -> Extraction:
    """Final answer of a model text: last box, else "answer is X", else last number (see module doc)."""
    if not text:
        return Extraction(None, "none")
    box = last_boxed(text)
    if box is not None and box != "":
        return Extraction(box, "boxed")
    phrases = [m.group(1).strip().rstrip(".,;") for m in _PHRASE.finditer(text)]
    phrases = [p for p in phrases if p]
    if phrases:
        return Extraction(phrases[-1], "phrase")
    numbers = _NUMBER.findall(text)
    if numbers:
        return Extraction(numbers[-1].replace(" ", "").replace(",", ""), "number")
    return Extraction(None, "none")


def gold_to_str(gold: Any) -> str:
    """Gold answers come as str, int or float (``27.0`` for AMC): give the canonical string."""
    if isinstance(gold, bool):
        raise TypeError("a boolean is not an answer")
    if isinstance(gold, int):
        return str(gold)
    if isinstance(gold, float):
        return str(int(gold)) if gold.is_integer() else repr(gold)
    if isinstance(gold, str):
        return gold.strip()
    raise TypeError(f"answer must be str, int or float, got {type(gold).__name__}")


def _strip_math(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
        s = s.strip("$").strip()
    return s


_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mathbf|operatorname)\{([^{}]*)\}")


def normalize_text(s: str) -> str:
    """Plain-string form used when math-verify finds nothing: no $, \\text{}, spaces, case, final dot."""
    s = _strip_math(s)
    s = _TEXT_CMD.sub(r"\1", s)
    s = s.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "")
    s = re.sub(r"\s+", "", s).rstrip(".").lower()
    return s


# math-verify's timeouts use SIGALRM, which only works on the main thread.
def _timeout() -> int | None:
    return 5 if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=65536)
def _parse_gold(gold: str) -> tuple:
    g = _strip_math(gold)
    from math_verify import parse  # imported on first use: the CLI starts without it

    return tuple(parse(f"${g}$", parsing_timeout=_timeout()))  # type: ignore[arg-type]


@lru_cache(maxsize=65536)
def _parse_pred(pred: str) -> tuple:
    p = _strip_math(pred)
    from math_verify import parse

    return tuple(parse(f"\\boxed{{{p}}}", parsing_timeout=_timeout()))  # type: ignore[arg-type]


@lru_cache(maxsize=65536)
def is_equivalent(pred: str | None, gold: str) -> bool:
    """True if the extracted ``pred`` means the same as ``gold`` (math-verify, string fallback)."""
    if pred is None:
        return False
    if normalize_text(pred) == normalize_text(gold):
        return True
    g, p = _parse_gold(gold), _parse_pred(pred)
    if not g or not p:
        return False
    from math_verify import verify

    return bool(verify(list(g), list(p), timeout_seconds=_timeout()))


def answers_match(a: str, b: str) -> bool:
    """Symmetric equivalence between two predictions (for voting: no side is the gold)."""
    return is_equivalent(a, b) or is_equivalent(b, a)


def grade(text: str | None, gold: Any) -> tuple[Extraction, bool]:
    """Extract the answer of ``text`` and grade it against ``gold`` (str/int/float)."""
    ex = extract_answer(text)
    return ex, is_equivalent(ex.answer, gold_to_str(gold))


@dataclass(frozen=True)
class Vote:
    """A majority vote: the winning answer, its index in the input, its count, and all cluster sizes."""

    answer: str | None
    index: int | None
    count: int
    clusters: tuple[int, ...]


def majority_vote(answers: Sequence[str | None]) -> Vote:
    """Vote over extracted answers, grouping equivalent ones (``answers_match``).

    ``None`` answers do not vote. Ties go to the group whose first member came earliest, so the
    result depends only on the order of ``answers`` (deterministic for a fixed seed order).
    """
    reps: list[int] = []  # index of each cluster's first member
    counts: list[int] = []
    for i, a in enumerate(answers):
        if a is None:
            continue
        for c, r in enumerate(reps):
            if answers_match(answers[r], a):  # type: ignore[arg-type]
                counts[c] += 1
                break
        else:
            reps.append(i)
            counts.append(1)
    if not reps:
        return Vote(None, None, 0, ())
    best = max(range(len(reps)), key=lambda c: (counts[c], -reps[c]))
    return Vote(answers[reps[best]], reps[best], counts[best], tuple(counts))
