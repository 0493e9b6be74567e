"""Final-answer extraction shared by the engine and the evaluation harness."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the ``{...}`` group opening at ``text[start]`` and the index after it."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
    return None  # unbalanced: the model was cut inside the box


def all_boxed(text: str) -> list[str]:
    """Every ``\\boxed{}``/``\\fbox{}`` content in order (nested braces kept, unclosed boxes skipped)."""
    found: list[tuple[int, str]] = []
    for cmd in _BOX_COMMANDS:
        for m in re.finditer(re.escape(cmd) + r"(?![A-Za-z])", text):
            j = m.end()
            while j < len(text) and text[j] == " ":
                j += 1
            if j < len(text) and text[j] == "{":
                got = _braced(text, j)
                if got is not None:
                    found.append((m.start(), got[0].strip()))
            elif j > m.end() and j < len(text):  # "\boxed 5": one token after a space
                tok = re.match(r"[^\s$]+", text[j:])
                if tok:
                    found.append((m.start(), tok.group(0)))
    return [s for _, s in sorted(found)]


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{}``/``\\fbox{}`` in ``text``, or None."""
    boxes = all_boxed(text)
    return boxes[-1] if boxes else None



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
