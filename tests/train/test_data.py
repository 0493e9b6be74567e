"""The JSONL validator: every problem reported as file:line, all of them at once."""

from __future__ import annotations

import json

import pytest

from parathinker.errors import DataError
from parathinker.train.data import check_file, load_records

from .conftest import toy_records, write_jsonl


def test_valid_file_loads(tmp_path):
    recs = toy_records(5)
    f = write_jsonl(tmp_path / "d.jsonl", recs[:2] + [""] + recs[2:])  # blank line skipped
    got = load_records(f, max_paths=8)
    assert [r.id for r in got] == [r["id"] for r in recs]
    assert got[1].messages is not None and got[0].prompt is not None
    assert got[3].line == 5


def test_every_error_reported_with_its_line(tmp_path):
    good = {"id": "a", "prompt": "q", "paths": ["p1", "p2"], "summary": "s", "answer": "1"}
    lines = [
        good,
        "{not json",
        {**good, "id": "a"},  # duplicate
        {"id": "b", "paths": ["p"], "summary": "s"},  # no prompt
        {"id": "c", "prompt": "q", "messages": [{"role": "user", "content": "q"}], "paths": ["p"], "summary": "s"},
        {"id": "d", "prompt": "q", "paths": [], "summary": "s"},
        {"id": "e", "prompt": "q", "paths": ["ok", "has <think2> inside"], "summary": "s"},
        {"id": "f", "prompt": "q", "paths": ["p"] * 9, "summary": "s"},
        {"id": "g", "prompt": "q", "paths": ["p"], "summary": "<summary> s"},
        {"id": "h", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
         "paths": ["p"], "summary": "s"},
        {"id": "i", "messages": [{"role": "robot", "content": "q"}], "paths": ["p", 3], "summary": "s"},
        {"id": "", "prompt": "q", "paths": ["p"], "summary": "s", "answer": 5},
        [1, 2],
        {"id": "j", "prompt": "q", "paths": ["p"]},
    ]
    f = write_jsonl(tmp_path / "bad.jsonl", [json.dumps(x) if not isinstance(x, str) else x for x in lines])
    recs, errors = check_file(f, max_paths=8)
    assert [r.id for r in recs] == ["a"]
    text = "\n".join(errors)
    expect = {
        2: "not valid JSON",
        3: "duplicate id 'a' (first on line 1)",
        4: 'give exactly one of "prompt"',
        5: 'give exactly one of "prompt"',
        6: '"paths" must be a non-empty list',
        7: "paths[1] contains the control token <think2>",
        8: "9 paths, but the model has only <think1>..<think8>",
        9: '"summary" contains the control token <summary>',
        10: "the last message must be from the user",
        11: "messages[0].role must be one of",
        12: '"id" must be a non-empty string',
        13: "expected a JSON object",
        14: '"summary" is missing',
    }
    for line, what in expect.items():
        assert f"{f}:{line}: {what}" in text, (line, what, text)
    assert f"{f}:11: paths[1] must be a string" in text
    assert f'{f}:12: "answer" must be a string' in text
    assert all("\n" not in e for e in errors)

    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON .*and \d+ more; run `parathinker data check"):
        load_records(f, max_paths=8)


def test_missing_or_empty_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_records(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no examples"):
        load_records(tmp_path / "empty.jsonl")
