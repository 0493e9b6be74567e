"""What ``data generate`` sends to the teacher and keeps from it: seeds, messages, bodies, grading,
the template summary (pure functions; ``datagen.py`` runs them)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from ..prompting import RELEASED_SUMMARY_PREFIX


def path_seed(base: int, pid: str, slot: int | str) -> int | None:
    """The seed sent for slot ``slot`` of problem ``pid`` (None when seeds are off)."""
    if base < 0:
        return None
    return int(hashlib.sha256(f"{base}:{pid}:{slot}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def path_body(choice: dict[str, Any], mode: str) -> str:
    """The training body of one logged choice."""
    r, c = (choice.get("reasoning") or "").strip(), (choice.get("content") or "").strip()
    if mode == "reasoning":
        return r
    if mode == "content":
        return c
    return "\n\n".join(t for t in (r, c) if t)


def template_summary(answer: str, grader: str = "math") -> str:
    """The released summary form: the forced prefix, then the answer boxed (pathfind: the task's spacing)."""
    a = answer.strip()
    if grader == "pathfind":
        from ..tasks.pathfind.teacher import boxed

        return f"{RELEASED_SUMMARY_PREFIX} {boxed(a)}"
    if len(a) >= 2 and a[0] == a[-1] == "$":
        a = a.strip("$").strip()
    return f"{RELEASED_SUMMARY_PREFIX} \\boxed{{{a}}}."


def grade_paths(choices: Sequence[tuple[str, str]], gold: str, grader: str = "math",
                record: dict | None = None) -> list[tuple[str | None, bool]]:
    """(answer, correct) of each (reasoning, content): the answer text's answer, else a box in the reasoning.

    Math problems: math-verify equivalence with ``gold``; pathfind: the task's verifier over
    ``record``. Runs in a worker process (math-verify's timeouts need its main thread)."""
    from ..eval.grading import extract_answer, is_equivalent

    out = []
    for reasoning, content in choices:
        ex = extract_answer(content) if content.strip() else None
        pred = ex.answer if ex is not None else None
        if pred is None:
            ex = extract_answer(reasoning)
            pred = ex.answer if ex.source == "boxed" else None
        if grader == "pathfind":
            from ..tasks.pathfind.data import verify_record

            ok = verify_record(dict(record or {}), pred)
        else:
            ok = is_equivalent(pred, gold)
        out.append((pred, ok))
    return out


def teacher_messages(problem: str, instruction: str) -> list[dict[str, str]]:
    """The chat sent to the teacher for one path."""
    return [{"role": "user", "content": f"{problem}\n\n{instruction}" if instruction else problem}]


SUMMARY_TAIL = 4000  # characters of a path's reasoning shown to the summarizer when it has no answer text


def summary_messages(problem: str, bodies: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """The chat asking the teacher to summarize the kept paths (their answer texts; see docs)."""
    parts = [f"Problem:\n{problem}\n\nBelow are {len(bodies)} independent solution attempts."]
    for i, (reasoning, content) in enumerate(bodies, 1):
        shown = content.strip() or reasoning.strip()[-SUMMARY_TAIL:]
        parts.append(f"### Attempt {i}\n{shown}")
    parts.append("Compare the attempts: say which reasoning holds and where any attempt goes wrong, then give the "
                 "final answer. Be concise, and put the final answer within \\boxed{}.")
    return [{"role": "user", "content": "\n\n".join(parts)}]


def collapse_spaces(text: str) -> str:
    return " ".join(text.split())
