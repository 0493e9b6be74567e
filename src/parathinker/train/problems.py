"""Problems for data generation: read from JSONL / JSON / Parquet / CSV or a hub dataset, with
stable ids, and checked for overlap with benchmarks (13-gram decontamination).

Rows are plain dicts; field names are configurable. A problem's id is its id field when the row
has one, else ``p-`` + the first 16 hex digits of the SHA-256 of its whitespace-normalised text
(stable across runs and machines). Rows without a problem text or an answer are not errors:
they are counted as dropped (a large hub dataset always has a few); a field missing from every
row is an error (the field name is wrong). Lines of a pathfind ``test.jsonl`` (the project's
task, ``parathinker task make-data``) are recognised by their fields: their ``prompt`` is the
problem and they are graded by the task's verifier (any valid route is right).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..eval.benchmarks import is_pathfind_record
from ..eval.grading import gold_to_str

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
NGRAM = 13
_BENCH_FIELDS = ("problem", "question", "prompt")


@dataclass(frozen=True)
class SourceProblem:
    """One input row: its id, question and gold answer; ``invalid`` names why it cannot be used."""

    id: str
    problem: str
    answer: str
    where: str
    invalid: str | None = None
    grader: str = "math"  # "math" (math-verify against answer) | "pathfind" (the task's verifier over record)
    record: dict | None = None


def text_id(text: str) -> str:
    """The stable id of a problem without one."""
    return "p-" + hashlib.sha256(" ".join(text.split()).encode()).hexdigest()[:16]


def _jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield f"{path}:{n}", json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None


def _json(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, dict):  # {"data": [...]} / {"train": [...]}: the one list inside
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a JSON list of objects (or an object holding one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for i, row in enumerate(data):
        yield f"{path}[{i}]", row


def _parquet(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"{path}: reading Parquet needs pyarrow: pip install 'parathinker[data]'") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow's errors are many; one line for the user
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path}[{i}]", row


def _csv(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.DictReader(f), 2):
            yield f"{path}:{n}", row


def _hub(name: str, split: str) -> Iterator[tuple[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"{name!r} is not a file here, and loading hub datasets needs 'datasets': "
            "pip install 'parathinker[data]' (or give a local JSONL/JSON/Parquet/CSV file)"
        ) from None
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, no such dataset or split, ...: one actionable line
        raise DataError(
            f"cannot load the hub dataset {name!r} [split {split}] ({type(e).__name__}); "
            "check the name and the network, or give a local JSONL/JSON/Parquet/CSV file"
        ) from None
    for i, row in enumerate(ds):
        yield f"{name}[{split}][{i}]", row


def read_rows(spec: str, split: str = "train") -> Iterator[tuple[str, Any]]:
    """``(where, row)`` of a problem file (by suffix) or, if ``spec`` is no file, a hub dataset."""
    path = Path(spec)
    if path.is_file():
        readers = {".jsonl": _jsonl, ".json": _json, ".parquet": _parquet, ".csv": _csv}
        reader = readers.get(path.suffix.lower())
        if reader is None:
            raise ConfigError(f"{path}: unknown file type; use one of {', '.join(FILE_SUFFIXES)}")
        return reader(path)
    if path.suffix.lower() in FILE_SUFFIXES or spec.startswith((".", "/")):
        raise DataError(f"{spec}: no such file")
    return _hub(spec, split)


def _answer(value: Any) -> str | None:
    try:
        s = gold_to_str(value)
    except TypeError:
        return None
    return s or None


def load_problems(
    spec: str, *, id_field: str = "id", problem_field: str = "problem", answer_field: str = "answer",
    split: str = "train", limit: int | None = None,
) -> list[SourceProblem]:
    """The first ``limit`` rows of ``spec`` as problems (invalid rows flagged, not raised)."""
    out: list[SourceProblem] = []
    first: dict[str, SourceProblem] = {}
    fields_seen: set[str] = set()
    for where, row in read_rows(spec, split):
        if limit is not None and len(out) >= limit:
            break
        if not isinstance(row, Mapping):
            raise DataError(f"{where}: expected an object with fields, got {type(row).__name__}")
        pathfind = is_pathfind_record(row)  # a pathfind test.jsonl line: its prompt, graded by the task
        fields_seen.update(row)
        if pathfind:
            fields_seen.add(problem_field)
        text = row.get("prompt" if pathfind else problem_field)
        text = text if isinstance(text, str) else ""
        answer = _answer(row.get(answer_field))
        given = row.get(id_field) if id_field else None
        pid = str(given) if given is not None and str(given).strip() else text_id(text)
        invalid = None if text.strip() else "no problem text"
        if invalid is None and answer is None:
            invalid = "no answer"
        prev = first.get(pid)
        if prev is not None:
            if " ".join(prev.problem.split()) != " ".join(text.split()):
                raise DataError(f"{where}: id {pid!r} already used by {prev.where} for another problem; "
                                "fix the ids or give --id-field '' to use hashes of the text")
            invalid = "duplicate problem"
            pid = f"{pid}#dup{len(out)}"  # kept apart from the first, never written
        p = SourceProblem(pid, text, answer or "", where, invalid,
                          "pathfind" if pathfind else "math", dict(row) if pathfind else None)
        first.setdefault(pid, p)
        out.append(p)
    if not out:
        raise DataError(f"{spec}: no problems")
    for name, flag in ((problem_field, "--problem-field"), (answer_field, "--answer-field")):
        if name not in fields_seen:
            raise DataError(f"{spec}: no row has the field {name!r}; the fields are {sorted(fields_seen)} "
                            f"(choose one with {flag})")
    return out


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words: what n-grams are made of (punctuation, LaTeX markup ignored)."""
    return re.findall(r"[a-z0-9]+", text.lower())


class Decontaminator:
    """Benchmark texts under a folder; ``hits(text)``: shares a 13-gram with one of them.

    A text under 13 words hits only a benchmark text with the same words. Files: every
    ``*.jsonl``, ``*.json``, ``*.parquet``, ``*.csv`` below the folder; texts: the fields
    ``problem``, ``question`` and ``prompt`` of each row.
    """

    def __init__(self, folder: str | Path) -> None:
        root = Path(folder)
        if not root.is_dir():
            raise ConfigError(f"--decontaminate {root}: not a directory")
        self.files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in FILE_SUFFIXES)
        if not self.files:
            raise ConfigError(f"--decontaminate {root}: no {'/'.join(FILE_SUFFIXES)} files inside")
        self.grams: set[tuple[str, ...]] = set()
        self.short: set[tuple[str, ...]] = set()
        self.texts = 0
        for f in self.files:
            for text in self._texts(read_rows(str(f))):
                w = words(text)
                self.texts += 1
                if len(w) < NGRAM:
                    self.short.add(tuple(w))
                self.grams.update(_grams(w))

    @staticmethod
    def _texts(rows: Iterable[tuple[str, Any]]) -> Iterator[str]:
        for _, row in rows:
            if isinstance(row, Mapping):
                for k in _BENCH_FIELDS:
                    if isinstance(row.get(k), str):
                        yield row[k]

    def hits(self, text: str) -> bool:
        """True if ``text`` overlaps a benchmark text (see class doc)."""
        w = words(text)
        if len(w) < NGRAM:
            return tuple(w) in self.short
        return any(g in self.grams for g in _grams(w))


def _grams(w: list[str]) -> Iterator[tuple[str, ...]]:
    return (tuple(w[i:i + NGRAM]) for i in range(len(w) - NGRAM + 1))
