"""Loaders on fixture files shaped like each benchmark format, and loud errors on bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parathinker.errors import DataError
from parathinker.eval.benchmarks import (
    BENCHMARK_NAMES,
    load_benchmark,
    load_hub,
    load_jsonl,
    parse_benchmark_list,
)

# One record per format seen in the real files (field sets and answer types).
FORMATS = {
    "aime24": [  # int id, problem + question + solution + url, answer str with leading zero
        {"id": 60, "problem": "P1?", "solution": "s", "answer": "204", "url": "u", "question": "P1?"},
        {"id": 61, "problem": "P2?", "solution": "s", "answer": "025", "url": "u", "question": "P2?"},
    ],
    "aime25": [  # str id, answer int
        {"problem": "Q0?", "answer": 70, "id": "0"},
        {"problem": "Q1?", "answer": 588, "id": "1"},
    ],
    "amc23": [  # int id, answer float
        {"id": 0, "problem": "A?", "answer": 27.0, "url": "u", "question": "A?"},
        {"id": 1, "problem": "B?", "answer": 2.5, "url": "u", "question": "B?"},
    ],
    "math500": [  # unique_id, LaTeX answers
        {"problem": "M?", "solution": "s", "answer": r"\left( 3, \frac{\pi}{2} \right)", "subject": "x",
         "level": 2, "unique_id": "test/precalculus/807.json"},
        {"problem": "N?", "solution": "s", "answer": r"\text{Evelyn}", "subject": "x", "level": 1,
         "unique_id": "test/algebra/1.json"},
    ],
}


def _write(path: Path, rows: list[object], raw_lines: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in rows] + (raw_lines or [])
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    for name, rows in FORMATS.items():
        _write(tmp_path / name / "test.jsonl", rows)
    return tmp_path


@pytest.mark.parametrize("name", BENCHMARK_NAMES)
def test_each_format_loads(data_dir: Path, name: str) -> None:
    probs = load_benchmark(name, data_dir)
    assert [p.benchmark for p in probs] == [name, name]
    assert probs[0].problem == FORMATS[name][0]["problem"]
    assert all(isinstance(p.answer, str) and p.answer for p in probs)


def test_answers_and_ids_normalised(data_dir: Path) -> None:
    assert [p.answer for p in load_benchmark("aime24", data_dir)] == ["204", "025"]
    assert [p.answer for p in load_benchmark("aime25", data_dir)] == ["70", "588"]
    assert [p.answer for p in load_benchmark("amc23", data_dir)] == ["27", "2.5"]
    assert [p.id for p in load_benchmark("math500", data_dir)][0] == "test/precalculus/807.json"
    assert [p.id for p in load_benchmark("aime24", data_dir)] == ["60", "61"]


def test_question_field_and_no_id(tmp_path: Path) -> None:
    f = _write(tmp_path / "mine.jsonl", [{"question": "q?", "answer": "1"}, {"question": "r?", "answer": 2}])
    probs = load_benchmark(str(f))
    assert [(p.benchmark, p.id, p.problem, p.answer) for p in probs] == [
        ("mine", "0", "q?", "1"), ("mine", "1", "r?", "2")]


def test_flat_layout_in_data_dir(tmp_path: Path) -> None:
    _write(tmp_path / "amc23.jsonl", FORMATS["amc23"])
    assert len(load_benchmark("amc23", tmp_path)) == 2


def test_missing_answer_names_file_line_and_field(tmp_path: Path) -> None:
    f = _write(tmp_path / "bad.jsonl", [{"problem": "a", "answer": "1"}, {"problem": "b"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: missing field 'answer'"):
        load_jsonl(f)


def test_missing_problem_names_file_line_and_field(tmp_path: Path) -> None:
    f = _write(tmp_path / "bad.jsonl", [{"answer": "1", "text": "x"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:1: missing field 'problem' \(or 'question'\)"):
        load_jsonl(f)


@pytest.mark.parametrize(
    ("rows", "raw", "pattern"),
    [
        ([{"problem": "a", "answer": "1"}], ["{not json"], r":2: not valid JSON"),
        ([{"problem": "a", "answer": [1]}], [], r":1: field 'answer'"),
        ([{"problem": "a", "answer": True}], [], r":1: field 'answer'"),
        ([{"problem": "", "answer": "1"}], [], r":1: field 'problem' must be a non-empty string"),
        ([{"problem": "a", "answer": " "}], [], r":1: field 'answer' is empty"),
        ([["a", "1"]], [], r":1: expected a JSON object"),
        ([{"id": 1, "problem": "a", "answer": "1"}, {"id": 1, "problem": "b", "answer": "2"}], [],
         r":2: duplicate id '1'"),
        ([], [], r"has no problems"),
    ],
)
def test_bad_files(tmp_path: Path, rows: list[object], raw: list[str], pattern: str) -> None:
    f = _write(tmp_path / "bad.jsonl", rows, raw)
    with pytest.raises(DataError, match=pattern):
        load_jsonl(f)


def test_unknown_names_and_dirs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown benchmark 'gsm9k'"):
        load_benchmark("gsm9k")
    with pytest.raises(DataError, match="not found in"):
        load_benchmark("aime24", tmp_path)
    with pytest.raises(DataError, match="not a directory"):
        load_benchmark("aime24", tmp_path / "nope")
    with pytest.raises(DataError, match="no such file"):
        load_benchmark(str(tmp_path / "nope.jsonl"))


def test_benchmark_list() -> None:
    assert parse_benchmark_list("aime24, math500,") == ["aime24", "math500"]
    with pytest.raises(DataError):
        parse_benchmark_list(" , ")
    with pytest.raises(DataError):
        parse_benchmark_list("aime24,aime24")


def test_hub_loader_uses_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub path is real code; here ``datasets.load_dataset`` is replaced (no network in tests)."""
    import datasets

    calls: list[tuple[str, str]] = []

    def fake_load(repo: str, split: str) -> list[dict[str, object]]:
        calls.append((repo, split))
        return [{"problem": "x?", "answer": "3", "unique_id": "u1"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    probs = load_hub("math500")
    assert calls == [("HuggingFaceH4/MATH-500", "test")]
    assert probs[0].id == "u1" and probs[0].answer == "3"

    def offline(repo: str, split: str) -> None:
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="give --data-dir"):
        load_hub("aime24")


SHARED = Path("/work/shared/benchmarks")


@pytest.mark.skipif(not SHARED.is_dir(), reason="the project's shared benchmark files are not here")
def test_real_benchmark_files_load() -> None:
    sizes = {name: len(load_benchmark(name, SHARED)) for name in BENCHMARK_NAMES}
    assert sizes == {"aime24": 30, "aime25": 30, "amc23": 40, "math500": 500}
