"""Problem files for data generation: formats, ids, bad input, 13-gram decontamination."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from parathinker.errors import ConfigError, DataError
from parathinker.train.problems import Decontaminator, load_problems, text_id

ROWS = [
    {"id": 7, "question": "What is 2 + 2?", "solution": 4},
    {"question": "What is 3 + 3?", "solution": "6"},
    {"id": "c", "question": "  ", "solution": "1"},
    {"id": "d", "question": "What is 5 + 5?", "solution": None},
    {"question": "What is   3 + 3?", "solution": "6"},  # the second row again (whitespace aside)
]
FIELDS = dict(problem_field="question", answer_field="solution")


def _write(tmp: Path, fmt: str) -> Path:
    p = tmp / f"problems.{fmt}"
    if fmt == "jsonl":
        p.write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "\n")
    elif fmt == "json":
        p.write_text(json.dumps({"train": ROWS}))
    elif fmt == "csv":
        with p.open("w", newline="") as f:
            w = csv.DictWriter(f, ["id", "question", "solution"])
            w.writeheader()
            w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in ROWS)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {k: [None if r.get(k) is None else str(r[k]) for r in ROWS] for k in ("id", "question", "solution")}
        pq.write_table(pa.table(cols), p)
    return p


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_every_format_gives_the_same_problems(tmp_path, fmt):
    probs = load_problems(str(_write(tmp_path, fmt)), **FIELDS)
    got = [(p.id, p.problem, p.answer, p.invalid) for p in probs]
    h = text_id("What is 3 + 3?")
    assert h == text_id("What is   3 + 3?\n") and h.startswith("p-") and len(h) == 18
    assert got[0] == ("7", "What is 2 + 2?", "4", None)
    assert got[1] == (h, "What is 3 + 3?", "6", None)
    assert got[2][3] == "no problem text" and got[3][3] == "no answer"
    assert got[4][3] == "duplicate problem" and got[4][0] != h
    assert len(load_problems(str(_write(tmp_path, fmt)), limit=2, **FIELDS)) == 2


def test_bad_inputs_say_what_to_do(tmp_path):
    p = _write(tmp_path, "jsonl")
    with pytest.raises(DataError, match="no row has the field 'problem'.*--problem-field"):
        load_problems(str(p))
    clash = tmp_path / "clash.jsonl"
    clash.write_text(json.dumps({"id": 1, "problem": "a", "answer": 1}) + "\n" + json.dumps({"id": 1, "problem": "b", "answer": 2}) + "\n")
    with pytest.raises(DataError, match="id '1' already used"):
        load_problems(str(clash))
    with pytest.raises(DataError, match="no such file"):
        load_problems(str(tmp_path / "missing.jsonl"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ConfigError, match="unknown file type"):
        load_problems(str(tmp_path / "x.txt"))



def test_hub_datasets(monkeypatch):
    """A hub id goes through datasets.load_dataset (replaced here: no network in tests); offline is one line."""
    import datasets

    calls = []

    def fake(name, split):
        calls.append((name, split))
        if name == "owner/offline":
            raise ConnectionError("no network")
        return [{"problem": "What is 2 + 2?", "answer": 4}]

    monkeypatch.setattr(datasets, "load_dataset", fake)
    probs = load_problems("owner/math", split="test")
    assert calls == [("owner/math", "test")] and [(p.problem, p.answer) for p in probs] == [("What is 2 + 2?", "4")]
    with pytest.raises(DataError, match=r"cannot load the hub dataset 'owner/offline' \[split train\] \(ConnectionError\)"):
        load_problems("owner/offline")


def test_decontamination_by_13_grams(tmp_path):
    bench = tmp_path / "bench"
    (bench / "aime24").mkdir(parents=True)
    long = "Find the number of ordered pairs of positive integers x and y such that x times y equals two thousand."
    (bench / "aime24" / "test.jsonl").write_text(json.dumps({"problem": long, "answer": "1"}) + "\n")
    (bench / "short.json").write_text(json.dumps([{"question": "What is 2 + 2?"}]))
    d = Decontaminator(bench)
    assert d.texts == 2 and len(d.files) == 2
    words = long.split()
    assert d.hits("Prove this. " + " ".join(words[3:16]) + " and more")  # 13 consecutive words shared
    assert not d.hits("Prove this. " + " ".join(words[3:15]) + " and more")  # only 12
    assert d.hits("what is 2+2") and not d.hits("what is 2+3")  # short texts: same words
    assert d.hits(long.upper().replace(" ", "  "))  # case and spacing ignored
    with pytest.raises(ConfigError, match="no .jsonl"):
        Decontaminator(_empty(tmp_path))


def _empty(tmp: Path) -> Path:
    e = tmp / "empty"
    e.mkdir()
    return e
