"""The multi-path dataset format (JSONL) and its validator.

One JSON object per line (blank lines are skipped)::

    {"id": "aime24-3",                      # unique, non-empty string
     "prompt": "Find the ...",              # the question; OR "messages": [{"role", "content"}, ...]
     "paths": ["First, ...", "Let x ..."],  # reasoning bodies, WITHOUT <think i> ... </think i>
     "summary": "Path 1 and 2 agree ... \\boxed{5}",  # WITHOUT <summary> ... </summary>
     "answer": "5"}                         # optional reference answer

``prompt`` is formatted exactly as at inference (chat template and instruction, see
``parathinker.prompting``); ``messages`` are used verbatim with the chat template, last
message from the user. Control tokens inside text are errors: the layout adds them. Errors are
collected for the whole file and reported as ``file:line: what is wrong``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

ROLES = ("system", "user", "assistant")
_CONTROL_RE = re.compile(r"</?think\d+>|</?summary>")


@dataclass(frozen=True)
class Record:
    """One validated training example."""

    id: str
    paths: tuple[str, ...]
    summary: str
    prompt: str | None = None
    messages: tuple[dict, ...] | None = None
    answer: str | None = None
    line: int = 0


def _text_problem(name: str, value: object) -> str | None:
    if not isinstance(value, str):
        return f"{name} must be a string, got {type(value).__name__}"
    if not value.strip():
        return f"{name} is empty"
    m = _CONTROL_RE.search(value)
    if m:
        return f"{name} contains the control token {m.group(0)}; give bodies without tags (the layout adds them)"
    return None


def validate_object(obj: object, max_paths: int | None = None) -> list[str]:
    """Everything wrong with one decoded line (empty list: valid)."""
    if not isinstance(obj, dict):
        return [f"expected a JSON object, got {type(obj).__name__}"]
    errs: list[str] = []
    rid = obj.get("id")
    if not isinstance(rid, str) or not rid.strip():
        errs.append('"id" must be a non-empty string')
    has_p, has_m = "prompt" in obj, "messages" in obj
    if has_p == has_m:
        errs.append('give exactly one of "prompt" (string) or "messages" (list of {role, content})')
    elif has_p:
        if p := _text_problem('"prompt"', obj["prompt"]):
            errs.append(p)
    else:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            errs.append('"messages" must be a non-empty list of {"role", "content"}')
        else:
            for j, m in enumerate(msgs):
                if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
                    errs.append(f'messages[{j}] must be an object with exactly "role" and "content"')
                    continue
                if m["role"] not in ROLES:
                    errs.append(f"messages[{j}].role must be one of {', '.join(ROLES)}, got {m['role']!r}")
                if p := _text_problem(f"messages[{j}].content", m["content"]):
                    errs.append(p)
            if isinstance(msgs[-1], dict) and msgs[-1].get("role") != "user":
                errs.append("the last message must be from the user (the model answers it)")
    paths = obj.get("paths")
    if not isinstance(paths, list) or not paths:
        errs.append('"paths" must be a non-empty list of strings')
    else:
        if max_paths is not None and len(paths) > max_paths:
            errs.append(
                f"{len(paths)} paths, but the model has only <think1>..<think{max_paths}>; "
                f"drop paths or prepare the model with --num-paths {len(paths)}"
            )
        for j, p in enumerate(paths):
            if prob := _text_problem(f"paths[{j}]", p):
                errs.append(prob)
    if "summary" not in obj:
        errs.append('"summary" is missing')
    elif p := _text_problem('"summary"', obj["summary"]):
        errs.append(p)
    if "answer" in obj and obj["answer"] is not None and not isinstance(obj["answer"], str):
        errs.append(f'"answer" must be a string, got {type(obj["answer"]).__name__}')
    return errs


def check_lines(lines: Iterable[str], source: str, max_paths: int | None = None) -> tuple[list[Record], list[str]]:
    """Parse and validate JSONL lines; returns the valid records and ``source:line: problem`` errors."""
    records: list[Record] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            errors.append(f"{source}:{n}: not valid JSON ({e})")
            continue
        problems = validate_object(obj, max_paths)
        rid = obj.get("id") if isinstance(obj, dict) else None
        if isinstance(rid, str) and rid in seen:
            problems.append(f"duplicate id {rid!r} (first on line {seen[rid]})")
        if problems:
            errors += [f"{source}:{n}: {p}" for p in problems]
            continue
        seen[rid] = n
        msgs = tuple(dict(m) for m in obj["messages"]) if "messages" in obj else None
        records.append(
            Record(rid, tuple(obj["paths"]), obj["summary"], obj.get("prompt"), msgs, obj.get("answer"), n)
        )
    return records, errors


def check_file(path: str | Path, max_paths: int | None = None) -> tuple[list[Record], list[str]]:
    """Validate a JSONL file; returns (valid records, all errors)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    return check_lines(text.splitlines(), str(path), max_paths)


def load_records(path: str | Path, max_paths: int | None = None) -> list[Record]:
    """Load a JSONL file, raising one DataError (first problem + count) if any line is invalid."""
    records, errors = check_file(path, max_paths)
    if errors:
        more = f" (and {len(errors) - 1} more; run `parathinker data check {path}`)" if len(errors) > 1 else ""
        raise DataError(errors[0] + more)
    if not records:
        raise DataError(f"{path}: no examples")
    return records
