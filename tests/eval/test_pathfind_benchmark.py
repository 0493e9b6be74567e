"""The pathfind benchmark: loaded from make-data's test.jsonl (or by name), graded by the task's verifier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_fakes import FakeLLM

from parathinker.errors import DataError
from parathinker.eval.benchmarks import load_benchmark, pathfind_default
from parathinker.eval.runlog import read_records
from parathinker.eval.runner import run_eval
from parathinker.eval.settings import EvalSettings, RunPlan
from parathinker.tasks.pathfind.data import DataConfig, grade, make_data
from parathinker.tasks.pathfind.problem import GenConfig


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pf")
    make_data(out, 5, 12, 0, GenConfig(), DataConfig())
    return out


def test_loads_test_jsonl_and_name(data_dir: Path) -> None:
    probs = load_benchmark(str(data_dir / "test.jsonl"))
    assert len(probs) == 12 and all(p.grader == "pathfind" for p in probs)
    assert probs[0].benchmark == data_dir.name
    lines = [json.loads(x) for x in (data_dir / "test.jsonl").read_text().splitlines()]
    assert [p.problem for p in probs] == [r["prompt"] for r in lines]
    assert [p.answer for p in probs] == [r["answer"] for r in lines]
    # the name alone is make-data's default held-out set (seed 0): same problems, same ids
    named = pathfind_default(12)
    assert [(p.id, p.problem, p.answer) for p in named] == [(p.id, p.problem, p.answer) for p in probs]
    assert load_benchmark("pathfind")[0].benchmark == "pathfind"


def test_grader_is_the_task_verifier(data_dir: Path) -> None:
    probs = load_benchmark(str(data_dir / "test.jsonl"))
    lines = [json.loads(x) for x in (data_dir / "test.jsonl").read_text().splitlines()]
    for p, rec in zip(probs, lines):
        route = p.answer.split()
        assert p.check(p.answer) and p.check("  ".join(route))  # spacing does not matter
        assert not p.check(" ".join(route[:-1]))  # stops short of the goal
        assert not p.check(" ".join(route[1:]))  # does not start at the start
        assert not p.check(" ".join([route[0], route[-1]]))  # not an edge (routes have >= 3 edges)
        assert not p.check(None) and not p.check("")
        for text in (f"found \\boxed{{ {p.answer} }}", f"guess \\boxed{{ {route[0]} {route[-1]} }}"):
            assert p.check(text.split("{ ")[1].split(" }")[0]) == grade(rec, text)


def test_run_eval_grades_pathfind_exactly(data_dir: Path, tmp_path: Path) -> None:
    probs = load_benchmark(str(data_dir / "test.jsonl"))
    golds = {p.problem: p.answer for p in probs}
    plan = RunPlan(benchmarks=(probs[0].benchmark,), methods=("sequential", "majority"), paths=(3,), samples=2)
    run_eval(FakeLLM(golds, p_correct=0.5), {probs[0].benchmark: probs}, plan, EvalSettings(model="fake"),
             tmp_path, progress=False)
    recs = read_records(tmp_path / "samples.jsonl")
    assert len(recs) == 12 * 2 * 2
    by_id = {p.id: p for p in probs}
    for r in recs:  # the fake's wrong answer is gold + "1": a node name that is not the goal
        assert r["correct"] == (r["answer"] is not None and r["answer"].strip() == r["gold"])
        assert r["correct"] == by_id[r["id"]].check(r["answer"])
    assert 0 < sum(r["correct"] for r in recs) < len(recs)


def test_bad_pathfind_file(tmp_path: Path) -> None:
    f = tmp_path / "test.jsonl"
    f.write_text(json.dumps({"id": "a", "prompt": "p", "start": "10", "goal": "11", "edges": [], "answer": "10 11"})
                 + "\n" + json.dumps({"id": "a", "prompt": "p", "start": "10", "goal": "11", "edges": [],
                                      "answer": "10 11"}) + "\n")
    with pytest.raises(DataError, match="duplicate id"):
        load_benchmark(str(f))
