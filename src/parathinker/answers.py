"""Final-answer extraction shared by the engine and the evaluation harness."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

_BOX_MARKERS = ("\\boxed", "\\fbox")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces respected; None if absent."""
    best: tuple[int, str] | None = None
    for marker in _BOX_MARKERS:
        start = text.rfind(marker + "{")
        while start != -1:
            i = start + len(marker) + 1
            depth = 1
            j = i
            while j < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            if depth == 0:
                if best is None or start > best[0]:
                    best = (start, text[i : j - 1].strip())
                break
            start = text.rfind(marker + "{", 0, start)  # unclosed: try an earlier one
    return best[1] if best else None


def normalize_answer(ans: str) -> str:
    """Cheap canonical form for voting without a math checker: no spaces, no trailing period."""
    return "".join(ans.split()).rstrip(".")


def majority_vote(answers: Iterable[str | None]) -> tuple[str | None, dict[str, int]]:
    """Most frequent answer by normalized string (ties: the one seen first); None answers do not vote."""
    first: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for a in answers:
        if a is None:
            continue
        key = normalize_answer(a)
        first.setdefault(key, a)
        counts[key] += 1
    if not counts:
        return None, {}
    top = max(counts.values())
    winner = next(k for k in first if counts[k] == top)
    return first[winner], {first[k]: v for k, v in counts.items()}
