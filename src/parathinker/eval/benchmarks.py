"""Benchmarks: problems with gold answers, by name (local JSONL or the Hugging Face hub) or by path.

Record format (one JSON object per line, blank lines ignored):
  - the question under ``problem`` or ``question`` (``problem`` wins if both),
  - the gold under ``answer``: a string (LaTeX allowed), an int, or a float (``27.0``),
  - optionally an id under ``id``, ``unique_id``, ``idx`` or ``problem_idx`` (else the line
    number); ids must be unique within a file.
A local ``--data-dir`` is searched for ``NAME/test.jsonl``, then ``NAME.jsonl``, then a single
``NAME/*.jsonl``. Without ``--data-dir``, named benchmarks come from the hub via ``datasets``.

The project's own task, ``pathfind`` (``parathinker.tasks.pathfind``): a ``test.jsonl`` written by
``make-data`` (records with ``prompt``, ``start``, ``goal``, ``edges``) is recognised by its fields;
its problems are graded exactly by the task's verifier (``tasks.pathfind.data.verify_record``:
the route starts at the start, ends at the goal, uses only edges of the prompt), not by
math-verify. The name ``pathfind`` without ``--data-dir`` is the task's default held-out set
(``make-data --seed 0 --test 1000``, generated in memory).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from .grading import gold_to_str, is_equivalent

PATHFIND = "pathfind"
_PATHFIND_KEYS = ("prompt", "start", "goal", "edges", "answer")


@dataclass(frozen=True)
class Problem:
    """One problem: its benchmark, a stable id, the question text and the gold answer string.

    ``grader``: "math" (math-verify equivalence with ``answer``) or "pathfind" (the task's exact
    verifier over ``record``, the test.jsonl line).
    """

    benchmark: str
    id: str
    problem: str
    answer: str
    grader: str = "math"
    record: Mapping[str, Any] | None = field(default=None, compare=False, hash=False, repr=False)

    def check(self, pred: str | None) -> bool:
        """True if the extracted answer ``pred`` is correct for this problem."""
        if self.grader == PATHFIND:
            from ..tasks.pathfind.data import verify_record

            return verify_record(dict(self.record or {}), pred)
        return is_equivalent(pred, self.answer)


@dataclass(frozen=True)
class HubSource:
    """Where a named benchmark lives on the Hugging Face hub."""

    repo: str
    split: str


# The local files in the project's benchmarks folder are exports of these datasets.
HUB_SOURCES: dict[str, HubSource] = {
    "aime24": HubSource("math-ai/aime24", "test"),
    "aime25": HubSource("math-ai/aime25", "test"),
    "amc23": HubSource("math-ai/amc23", "test"),
    "math500": HubSource("HuggingFaceH4/MATH-500", "test"),
}
BENCHMARK_NAMES: tuple[str, ...] = tuple(HUB_SOURCES)

_PROBLEM_KEYS = ("problem", "question")
_ID_KEYS = ("id", "unique_id", "idx", "problem_idx")


def problems_from_records(records: Iterable[tuple[str, Mapping[str, Any]]], benchmark: str) -> list[Problem]:
    """Validate ``(where, record)`` pairs (``where`` = "file:line" for errors) into Problems."""
    out: list[Problem] = []
    seen: dict[str, str] = {}
    for n, (where, rec) in enumerate(records):
        if not isinstance(rec, Mapping):
            raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        text = next((rec[k] for k in _PROBLEM_KEYS if k in rec), None)
        if text is None:
            raise DataError(f"{where}: missing field 'problem' (or 'question'); fields are {sorted(rec)}")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: field 'problem' must be a non-empty string")
        if "answer" not in rec or rec["answer"] is None:
            raise DataError(f"{where}: missing field 'answer'; fields are {sorted(rec)}")
        try:
            gold = gold_to_str(rec["answer"])
        except TypeError as e:
            raise DataError(f"{where}: field 'answer': {e}") from None
        if not gold:
            raise DataError(f"{where}: field 'answer' is empty")
        pid = next((rec[k] for k in _ID_KEYS if k in rec and rec[k] is not None), n)
        pid = str(pid)
        if pid in seen:
            raise DataError(f"{where}: duplicate id {pid!r} (first at {seen[pid]})")
        seen[pid] = where
        out.append(Problem(benchmark, pid, text, gold))
    if not out:
        raise DataError(f"benchmark {benchmark!r} has no problems")
    return out


def is_pathfind_record(rec: Any) -> bool:
    """A line of a pathfind ``test.jsonl`` (from ``make-data``)."""
    return isinstance(rec, Mapping) and all(k in rec for k in _PATHFIND_KEYS)


def pathfind_problems(records: Iterable[tuple[str, Mapping[str, Any]]], benchmark: str = PATHFIND) -> list[Problem]:
    """Problems of the pathfind task, graded by its verifier (see module doc)."""
    out: list[Problem] = []
    seen: dict[str, str] = {}
    for n, (where, rec) in enumerate(records):
        if not is_pathfind_record(rec):
            raise DataError(f"{where}: not a pathfind test record (needs {', '.join(_PATHFIND_KEYS)})")
        pid = str(rec.get("id", n))
        if pid in seen:
            raise DataError(f"{where}: duplicate id {pid!r} (first at {seen[pid]})")
        seen[pid] = where
        out.append(Problem(benchmark, pid, rec["prompt"], str(rec["answer"]), PATHFIND, dict(rec)))
    if not out:
        raise DataError(f"benchmark {benchmark!r} has no problems")
    return out


def pathfind_default(n: int = 1000, seed: int = 0) -> list[Problem]:
    """The pathfind held-out set of ``make-data --seed SEED --test N`` (default knobs), in memory."""
    from ..tasks.pathfind.data import DataConfig, split_problems, test_record
    from ..tasks.pathfind.problem import GenConfig

    _, test = split_problems(seed, 0, n, GenConfig())
    cfg = DataConfig()
    return pathfind_problems(((f"pathfind[{i}]", test_record(f"pf-test-{i}", p, cfg)) for i, p in enumerate(test)))


def _read_jsonl(path: Path) -> Iterable[tuple[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


def load_jsonl(path: str | Path, name: str | None = None) -> list[Problem]:
    """Load a benchmark from a JSONL file; ``name`` defaults to the file's stem (or folder for test.jsonl)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    if name is None:
        name = p.parent.name if p.stem in ("test", "train", "validation") else p.stem
    records = list(_read_jsonl(p))
    if records and is_pathfind_record(records[0][1]):
        return pathfind_problems(records, name)
    return problems_from_records(records, name)


def find_local(name: str, data_dir: str | Path) -> Path:
    """The JSONL file of benchmark ``name`` inside ``data_dir`` (see module doc for the search order)."""
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"--data-dir {d}: not a directory")
    candidates = [d / name / "test.jsonl", d / f"{name}.jsonl"]
    for c in candidates:
        if c.is_file():
            return c
    many = sorted((d / name).glob("*.jsonl")) if (d / name).is_dir() else []
    if len(many) == 1:
        return many[0]
    tried = ", ".join(str(c) for c in candidates)
    extra = f"; {d / name} holds several .jsonl files: {[m.name for m in many]}" if many else ""
    raise DataError(f"benchmark {name!r} not found in {d} (tried {tried}{extra})")


def load_hub(name: str) -> list[Problem]:
    """Download benchmark ``name`` from the Hugging Face hub (needs network and ``datasets``)."""
    src = HUB_SOURCES[name]
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"benchmark {name!r}: loading it from the hub needs `pip install 'parathinker[hub]'`; "
            "or give --data-dir with local JSONL files"
        ) from None
    try:
        ds = datasets.load_dataset(src.repo, split=src.split)
    except Exception as e:  # offline, renamed dataset, ...: one actionable line
        raise DataError(
            f"benchmark {name!r}: cannot load {src.repo} [{src.split}] from the hub "
            f"({type(e).__name__}); give --data-dir with local JSONL files"
        ) from None
    return problems_from_records(((f"{src.repo}[{i}]", r) for i, r in enumerate(ds)), name)


def load_benchmark(spec: str, data_dir: str | Path | None = None) -> list[Problem]:
    """A benchmark by name (aime24, aime25, amc23, math500) or a path to any JSONL file."""
    spec = spec.strip()
    if spec.endswith(".jsonl") or Path(spec).is_file():
        return load_jsonl(spec)
    if spec == PATHFIND and data_dir is None:
        return pathfind_default()
    if spec not in HUB_SOURCES and data_dir is None:
        raise DataError(
            f"unknown benchmark {spec!r}: use one of {', '.join(BENCHMARK_NAMES)}, {PATHFIND} "
            "or a path to a .jsonl file"
        )
    if data_dir is not None:
        return load_jsonl(find_local(spec, data_dir), spec)
    return load_hub(spec)


def parse_benchmark_list(text: str) -> list[str]:
    """``"aime24, math500"`` -> ``["aime24", "math500"]`` (no empties, no duplicates)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise DataError("--benchmark is empty")
    if len(set(names)) != len(names):
        raise DataError(f"--benchmark lists a benchmark twice: {text!r}")
    return names


def benchmark_label(spec: str) -> str:
    """The short name a benchmark is logged under: the name itself, or a file's derived name."""
    if spec.endswith(".jsonl") or Path(spec).is_file():
        p = Path(spec)
        return p.parent.name if p.stem in ("test", "train", "validation") else p.stem
    return spec
