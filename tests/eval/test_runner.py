"""Runner: what runs, seeds, records, resume after a kill, shards, settings guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_fakes import FakeLLM

from parathinker.errors import ConfigError
from parathinker.eval.benchmarks import Problem
from parathinker.eval.runlog import read_records
from parathinker.eval.runner import SEED_STRIDE, run_eval, sample_key, select_problems
from parathinker.eval.settings import EvalSettings, RunPlan, parse_int_list, parse_shard


def _problems(n: int = 5) -> dict[str, list[Problem]]:
    return {
        "toyA": [Problem("toyA", str(i), f"what is {i}+{i}?", str(2 * i)) for i in range(n)],
        "toyB": [Problem("toyB", f"b{i}", f"what is {i}*3?", str(3 * i)) for i in range(n)],
    }


def _golds(probs: dict[str, list[Problem]]) -> dict[str, str]:
    return {p.problem: p.answer for ps in probs.values() for p in ps}


PLAN = RunPlan(benchmarks=("toyA", "toyB"), methods=("sequential", "majority", "parathinker"),
               paths=(2, 4), samples=2, batch_size=2)
SETTINGS = EvalSettings(model="fake", max_path_tokens=100)


def _comparable(recs: list[dict], drop_batch: bool = False) -> dict:
    drop = {"latency", "wall_time"} | ({"batch", "batch_index"} if drop_batch else set())
    return {sample_key(r): {k: v for k, v in r.items() if k not in drop} for r in recs}


def test_runs_every_cell_once(tmp_path: Path) -> None:
    probs = _problems()
    llm = FakeLLM(_golds(probs))
    n = run_eval(llm, probs, PLAN, SETTINGS, tmp_path, progress=False)
    # 2 benchmarks x 5 problems x (sequential + majority x2 + parathinker x2) x 2 samples
    assert n == 2 * 5 * 5 * 2
    recs = read_records(tmp_path / "samples.jsonl")
    assert len({sample_key(r) for r in recs}) == n
    assert run_eval(llm, probs, PLAN, SETTINGS, tmp_path, progress=False) == 0  # nothing left


def test_record_contents_and_grading(tmp_path: Path) -> None:
    probs = _problems(3)
    run_eval(FakeLLM(_golds(probs)), probs, PLAN, SETTINGS, tmp_path, progress=False)
    recs = read_records(tmp_path / "samples.jsonl")
    for r in recs:
        assert r["correct"] == (r["answer"] == r["gold"])  # fake: wrong answers are gold+"1"
        assert r["total_tokens"] == sum(r["path_tokens"]) + r["summary_tokens"]
        assert len(r["path_tokens"]) == len(r["path_answers"]) == (1 if r["method"] == "sequential" else r["paths"])
        assert r["seed"] == r["sample"] * SEED_STRIDE
        assert r["latency"] > 0 and r["wall_time"] >= 0
    maj = [r for r in recs if r["method"] == "majority"]
    assert all(r["source"] == "vote" and r["engine_answer"] is None for r in maj)
    # the voted answer is the most frequent path answer (ties: earliest)
    for r in maj:
        answers = r["path_answers"]
        best = max(answers, key=lambda a: (answers.count(a), -answers.index(a)))
        assert r["answer"] == best
    assert all(r["source"] == "boxed" for r in recs if r["method"] == "parathinker")


def test_seeds_and_modes_reach_the_engine(tmp_path: Path) -> None:
    probs = _problems(2)
    llm = FakeLLM(_golds(probs))
    plan = RunPlan(benchmarks=("toyA",), methods=("parathinker",), paths=(4,), samples=3, batch_size=8, vote=2)
    run_eval(llm, probs, plan, EvalSettings(seed=10, max_path_tokens=100), tmp_path, progress=False)
    # 3 plain samples (seeds 10 + s * stride), then 3 voted samples of 2 runs each
    assert [(c[2] - 10) // SEED_STRIDE for c in llm.calls] == [0, 1, 2, 0, 1, 2, 3, 4, 5]
    assert all((c[2] - 10) % SEED_STRIDE == 0 for c in llm.calls)
    assert all(c == (2, "parathinker", c[2], 4) for c in llm.calls)
    voted = [r for r in read_records(tmp_path / "samples.jsonl") if r["method"] == "parathinker+maj2"]
    assert len(voted) == 6 and all(len(r["run_answers"]) == 2 and len(r["path_tokens"]) == 8 for r in voted)


def test_majority_waits_for_all_paths_and_sequential_long_budget() -> None:
    s = EvalSettings(max_path_tokens=100, sequential_max_tokens=300, termination="first")
    assert s.parallel("majority", 4).termination == "last"
    assert s.parallel("parathinker", 4).termination == "first"
    assert s.parallel("sequential-long", 8).max_path_tokens == 300
    assert s.parallel("sequential-long", 8).num_paths == 1
    assert EvalSettings(max_path_tokens=100).long_budget == 200


def test_kill_and_resume_equals_uninterrupted(tmp_path: Path) -> None:
    probs = _problems()
    golds = _golds(probs)
    run_eval(FakeLLM(golds), probs, PLAN, SETTINGS, tmp_path / "full", progress=False)
    full = read_records(tmp_path / "full" / "samples.jsonl")

    out = tmp_path / "killed"
    killer = FakeLLM(golds, fail_after=7)
    with pytest.raises(KeyboardInterrupt):
        run_eval(killer, probs, PLAN, SETTINGS, out, progress=False)
    assert len(killer.calls) == 7
    # every sample of the 7 finished calls is on disk (batches hold 2, 2, 1 of 5 problems)
    assert len(read_records(out / "samples.jsonl")) == sum(c[0] for c in killer.calls) == 12
    # a write cut in the middle of a record (kill during the write) is dropped on resume
    with (out / "samples.jsonl").open("a") as f:
        f.write('{"benchmark": "toyA", "id": "0", "meth')
    with pytest.warns(UserWarning, match="partial last record"):
        run_eval(FakeLLM(golds), probs, PLAN, SETTINGS, out, progress=False)
    resumed = read_records(out / "samples.jsonl")
    assert len(resumed) == len(full)  # no duplicate, no loss
    assert _comparable(resumed) == _comparable(full)


def test_shards_partition_and_union_equals_full(tmp_path: Path) -> None:
    probs = _problems()
    golds = _golds(probs)
    run_eval(FakeLLM(golds), probs, PLAN, SETTINGS, tmp_path / "full", progress=False)
    out = tmp_path / "sharded"
    for i in range(3):
        plan = RunPlan(**{**PLAN.__dict__, "shard": (i, 3)})
        run_eval(FakeLLM(golds), probs, plan, SETTINGS, out, progress=False)
    logs = sorted(out.glob("samples.shard*of3.jsonl"))
    assert len(logs) == 3
    recs = [r for p in logs for r in read_records(p)]
    # (batches differ between layouts; the fake's outputs do not depend on batching)
    full = read_records(tmp_path / "full" / "samples.jsonl")
    assert _comparable(recs, drop_batch=True) == _comparable(full, drop_batch=True)
    # a shard owns whole problems
    owners = {}
    for p in logs:
        for r in read_records(p):
            assert owners.setdefault((r["benchmark"], r["id"]), p) == p


def test_limit_and_selection() -> None:
    ps = _problems(10)["toyA"]
    assert [p.id for p in select_problems(ps, 4, (0, 1))] == ["0", "1", "2", "3"]
    assert [p.id for p in select_problems(ps, None, (1, 3))] == ["1", "4", "7"]


def test_rerun_with_other_settings_is_refused(tmp_path: Path) -> None:
    probs = _problems(1)
    plan = RunPlan(benchmarks=("toyA",), methods=("sequential",))
    run_eval(FakeLLM(_golds(probs)), probs, plan, SETTINGS, tmp_path, progress=False)
    assert json.loads((tmp_path / "run.json").read_text())["max_path_tokens"] == 100
    with pytest.raises(ConfigError, match="max_path_tokens: 100 -> 200"):
        run_eval(FakeLLM(_golds(probs)), probs, plan, EvalSettings(model="fake", max_path_tokens=200),
                 tmp_path, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"methods": ("best",)}, "unknown method 'best'"),
        ({"paths": (0,)}, "--paths"),
        ({"samples": 0}, "--samples"),
        ({"vote": 1}, "--vote"),
        ({"limit": 0}, "--limit"),
        ({"shard": (3, 3)}, "--shard"),
    ],
)
def test_bad_plans(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        RunPlan(**{"benchmarks": ("a",), "methods": ("sequential",), **kwargs})


def test_bad_settings_and_option_parsing() -> None:
    with pytest.raises(ConfigError, match="temperature"):
        EvalSettings(temperature=-1)
    with pytest.raises(ConfigError, match="prompt-template"):
        EvalSettings(prompt_template="no placeholder")
    assert parse_int_list("1, 2,4", "--paths") == (1, 2, 4)
    with pytest.raises(ConfigError, match="--paths"):
        parse_int_list("1,x", "--paths")
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "a/b", "1"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)
