"""`parathinker data generate` against a deterministic OpenAI-compatible stub teacher (tests/train/teacher_stub.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from parathinker.train.data import check_file
from parathinker.train.datagen import DataGenConfig, generate, template_summary

from .teacher_stub import MODEL, Case, Stub

P = 4
BENCH = "Let x be the number of ways to tile a two by eight board with dominoes; find x modulo seven please."


def cases() -> list[Case]:
    """Ten problems, each exercising one rule (see the expected counts in the tests)."""
    return [
        Case("add", "What is 2 plus 3?", "5", ["right", "right", "wrong", "right"]),
        Case("allwrong", "What is 7 times 8?", "56", ["wrong"] * 4, wrong="54"),
        Case("mixed", "What is 10 minus 4?", "6", ["right", "trunc", "dup", "wrong"], fmt="think"),
        Case("down", "What is 9 plus 9?", "18", ["right"] * 4, always_500=True),
        Case("busy", "What is 6 plus 6?", "12", ["right"] * 4, fmt="open", first="429"),
        Case("bench", BENCH + " (restated)", "3", ["right"] * 4),
        Case("noanswer", "What is 1 plus 1?", None, ["right"] * 4),
        Case("slow", "What is 4 plus 4?", "8", ["right", "right", "boxed-cut", "right"], first="slow", fmt="reasoning"),
        Case("half", "What is one half as a fraction?", "\\frac{1}{2}", ["right", "wrong", "right", "right"],
             right_text="0.5", first="500"),
        Case("blank", "What is 3 plus 3?", "6", ["empty"] * 4),
    ]


def write_problems(path: Path, cs: list[Case]) -> Path:
    rows = []
    for c in cs:
        row = {"id": c.pid, "problem": c.problem}
        if c.answer is not None:
            row["answer"] = c.answer
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def bench_dir(tmp_path: Path) -> Path:
    d = tmp_path / "bench"
    d.mkdir()
    (d / "aime.jsonl").write_text(json.dumps({"problem": BENCH, "answer": "3"}) + "\n")
    return d


def run(stub: Stub, tmp_path: Path, name: str = "out", **kw) -> tuple[DataGenConfig, dict]:
    url = stub.start()
    try:
        opts = dict(paths=P, concurrency=4, timeout=0.5, backoff=0.01, max_retries=2, grade_workers=0) | kw
        cfg = DataGenConfig(problems=str(write_problems(tmp_path / "problems.jsonl", stub.cases)), model=MODEL,
                            out=str(tmp_path / f"{name}.jsonl"), base_urls=(url,), **opts)
        _, man = generate(cfg, progress=False)
    finally:
        stub.stop()
    return cfg, man


EXPECTED_DROPS = {"contaminated": 1, "no answer": 1, "no usable paths": 1, "request failed": 1, "too few correct": 1}


@pytest.mark.parametrize("supports_n", ["yes", "reject", "ignore"])
def test_counts_are_exact_and_the_output_passes_data_check(tmp_path, bench_dir, supports_n):
    stub = Stub(cases(), supports_n=supports_n, slow=1.0)
    cfg, man = run(stub, tmp_path, decontaminate=str(bench_dir))
    c = man["counts"]
    assert c["problems_in"] == 10 and c["kept"] == 5
    assert c["dropped"] == EXPECTED_DROPS
    # 8 problems asked: add 3/4 right, allwrong 0, mixed 2 (one a duplicate), busy 4, slow 4 (a cut path that had
    # boxed the answer counts), half 3 (0.5 == \frac{1}{2} by math-verify), blank 0; down failed before grading
    assert c["paths_graded"] == 7 * P and c["paths_correct"] == 3 + 0 + 2 + 4 + 4 + 3 + 0
    assert c["paths_truncated"] == 2
    assert c["paths_dropped"] == {"duplicate": 1, "empty": 4}
    assert c["paths_written"] == 4 + 3 + 4 + 4 + 4
    records, errors = check_file(cfg.out)
    assert errors == []
    by_id = {r.id: r for r in records}
    assert list(by_id) == ["add", "mixed", "busy", "slow", "half"]  # problem order, whatever finished first
    assert by_id["add"].summary == template_summary("5") and by_id["half"].answer == "\\frac{1}{2}"
    assert all("<think>" not in p and "</think>" not in p for r in records for p in r.paths)
    # reasoning read from each format, and the answer text after it
    assert by_id["mixed"].paths[0].startswith("Path 0: work through mixed") and by_id["mixed"].paths[0].endswith("\\boxed{6}.")
    assert by_id["busy"].paths[2].startswith("Path 2: work through busy")  # "...</think>" (opened by the template)
    assert by_id["slow"].paths[1].startswith("Path 1: work through slow")  # "reasoning" field
    assert ("bench", 0) not in stub.served and ("noanswer", 0) not in stub.served  # never asked
    assert man["teacher"]["n_support"] == {cfg.base_urls[0]: supports_n == "yes"}
    if supports_n == "yes":  # one request per problem: down 2 retries, then one each for busy (429), slow, half (500)
        assert man["requests"]["retries"] == 5 and man["requests"]["failures"] == 1
    assert Path(cfg.manifest_path).is_file() and json.loads(Path(cfg.manifest_path).read_text())["written"] == 5


def test_filters_and_min_correct(tmp_path):
    stub = Stub(cases())
    _, man = run(stub, tmp_path, drop_truncated=True, wrong_paths="drop", min_correct=3)
    c = man["counts"]
    # add 3 right left, busy 4, bench 4 (not decontaminated here), slow 3 (its cut path dropped), half 3: kept;
    # mixed: 1 path left (cut, duplicate, wrong dropped); allwrong and blank: none left
    assert c["kept"] == 5
    assert c["dropped"] == {"no answer": 1, "no usable paths": 2, "request failed": 1, "too few correct": 1}
    assert c["paths_dropped"] == {"duplicate": 1, "empty": 4, "truncated": 2, "wrong": 1 + 4 + 1 + 1}
    assert c["paths_written"] == 3 + 4 + 4 + 3 + 3


def test_teacher_summaries_are_verified_and_resumed(tmp_path):
    cs = cases()
    cs[0].summary = "wrong"
    stub = Stub(cs)
    cfg, man = run(stub, tmp_path, summary="teacher")
    c = man["counts"]
    assert c["kept"] == 5 and c["dropped"]["summary incorrect"] == 1  # add's summary boxes a wrong answer
    records, errors = check_file(cfg.out)
    assert errors == [] and [r.id for r in records] == ["mixed", "busy", "bench", "slow", "half"]
    assert all(r.summary == f"Attempts 1 and 2 agree; the answer is \\boxed{{{r.answer}}}." for r in records)
    # a rerun asks nothing the log has: only the problem whose requests failed is asked again (1 + 2 retries)
    stub2 = Stub(cs)
    _, man2 = run(stub2, tmp_path, summary="teacher")
    assert sum(stub2.served.values()) == 0 and stub2.requests["chat"] == 3
    assert man2["counts"] == man["counts"] | {"responses_from_log": man["counts"]["teacher_responses"]}


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path):
    """A run killed (SIGKILL) after some responses are logged, then rerun, writes what one run writes."""
    many = [Case(f"q{i}", f"What is {i} plus {i}?", str(2 * i), ["right", "wrong", "right", "trunc"]) for i in range(12)]
    full = tmp_path / "full"
    full.mkdir()
    _, man_full = run(Stub(many, supports_n="reject"), full)

    part = tmp_path / "part"
    part.mkdir()
    stub = Stub(many, supports_n="reject", delay=0.05)
    url = stub.start()
    try:
        problems = write_problems(part / "problems.jsonl", many)
        out = part / "out.jsonl"
        cmd = [sys.executable, "-m", "parathinker", "data", "generate", "--base-url", url, "--problems", str(problems),
               "--model", MODEL, "--out", str(out), "--paths", str(P), "--concurrency", "2", "--grade-workers", "0",
               "--timeout", "5", "--backoff", "0.01"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log = part / "out.raw.jsonl"
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and log.read_bytes().count(b'"kind": "paths"') >= 9:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        with log.open("ab") as f:  # a write torn by the kill
            f.write(b'{"kind": "paths", "id": "q1')
        logged = {(r["id"], s) for r in map(json.loads, log.read_text().splitlines()[:-1]) if r["kind"] == "paths"
                  for s in r["slots"]}
        assert 9 <= len(logged) < len(many) * P and not out.exists()
        served_before = list(stub.log)
        cfg = DataGenConfig(problems=str(problems), model=MODEL, out=str(out), base_urls=(url,), paths=P,
                            concurrency=2, timeout=5, backoff=0.01, grade_workers=0)
        with pytest.warns(UserWarning, match="partial last record"):
            _, man = generate(cfg, progress=False)
    finally:
        stub.stop()
    asked_again = stub.log[len(served_before):]
    assert not set(asked_again) & logged  # nothing in the log was asked again
    assert len(asked_again) == len(set(asked_again)) == len(many) * P - len(logged)
    assert out.read_bytes() == (full / "out.jsonl").read_bytes()
    strip = lambda c: {k: v for k, v in c.items() if k != "responses_from_log"}  # noqa: E731
    assert strip(man["counts"]) == strip(man_full["counts"])


def test_grading_in_worker_processes(tmp_path):
    stub = Stub(cases()[:1] + cases()[8:9])
    _, man = run(stub, tmp_path, grade_workers=1)
    assert man["counts"]["kept"] == 2 and man["counts"]["paths_correct"] == 3 + 3


def test_rerun_with_other_settings_is_refused(tmp_path):
    stub = Stub(cases()[:1])
    run(stub, tmp_path)
    from parathinker.errors import ConfigError

    with pytest.raises(ConfigError, match="temperature"):
        run(Stub(cases()[:1]), tmp_path, temperature=0.3)


def test_cli_output_checks_and_trains(tmp_path, prepared_qwen, capsys):
    """`data generate` (the CLI) -> `data check --model` -> `train --max-steps 2`: the data is usable as is."""
    from parathinker.cli import main

    stub = Stub(cases())
    url = stub.start()
    out = tmp_path / "gen.jsonl"
    try:
        rc = main(["data", "generate", "--base-url", url, "--problems", str(write_problems(tmp_path / "p.jsonl", stub.cases)),
                   "--model", MODEL, "--out", str(out), "--paths", str(P), "--timeout", "0.5", "--backoff", "0.01",
                   "--max-retries", "2", "--grade-workers", "0", "--tokenizer", str(prepared_qwen)])
    finally:
        stub.stop()
    text = capsys.readouterr()
    assert rc == 0, text.err
    assert "problems in" in text.out and "path length (tokens)" in text.out and "6 examples" in text.out
    assert "rerun the same command" in text.err  # "down" failed for good
    assert main(["data", "check", str(out), "--model", str(prepared_qwen)]) == 0
    assert "6 valid examples" in capsys.readouterr().out
    rc = main(["train", "--model", str(prepared_qwen), "--data", str(out), "--output", str(tmp_path / "run"),
               "--max-steps", "2", "--epochs", "0", "--global-batch-size", "2", "--per-device-batch-size", "2",
               "--no-gradient-checkpointing", "--save-steps", "100", "--max-length", "512"])
    assert rc == 0
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(x)]
    assert len(losses) == 2 and all(v == v and v > 0 for v in losses)


def test_cli_bad_options_are_one_line(tmp_path, capsys):
    from parathinker.cli import main

    p = write_problems(tmp_path / "p.jsonl", cases()[:1])
    base = ["data", "generate", "--problems", str(p), "--model", MODEL, "--out", str(tmp_path / "o.jsonl")]
    for extra, msg in ([[], "give --base-url"],
                       [["--base-url", "http://127.0.0.1:9/v1", "--extra-body", "{bad"], "--extra-body is not valid JSON"],
                       [["--base-url", "http://127.0.0.1:9/v1", "--min-correct", "9"], "--min-correct must be in 0..--paths"],
                       [["--base-url", "127.0.0.1:9"], "give an http(s) URL"],
                       [["--base-url", "http://127.0.0.1:9/v1", "--max-retries", "0"], "cannot reach the teacher"]):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and "\n" not in err and "Traceback" not in err


def test_pathfind_problems_are_graded_by_the_task(tmp_path):
    """A pathfind test.jsonl works as is: its prompt is the problem, routes are checked by the task's verifier."""
    from parathinker.eval.benchmarks import pathfind_default
    from parathinker.tasks.pathfind.teacher import boxed

    recs = [p.record for p in pathfind_default(3)]
    problems = tmp_path / "test.jsonl"
    problems.write_text("".join(json.dumps(r) + "\n" for r in recs))
    cs = [Case(r["id"], r["prompt"], r["answer"], ["right", "wrong", "right", "wrong"], wrong=r["goal"]) for r in recs]
    cs[2].slots = ["wrong"] * 4
    stub = Stub(cs)
    url = stub.start()
    try:
        cfg = DataGenConfig(problems=str(problems), model=MODEL, out=str(tmp_path / "pf.jsonl"), base_urls=(url,),
                            paths=P, grade_workers=0, instruction="")
        _, man = generate(cfg, progress=False)
    finally:
        stub.stop()
    assert man["counts"]["kept"] == 2 and man["counts"]["paths_correct"] == 4
    assert man["counts"]["dropped"] == {"too few correct": 1}
    records, errors = check_file(cfg.out)
    assert errors == [] and [r.prompt for r in records] == [r["prompt"] for r in recs[:2]]
    assert records[0].summary.endswith(boxed(recs[0]["answer"]))


def test_cli_nothing_kept_is_an_error_line(tmp_path, capsys):
    """Every problem dropped: exit 1 and the CLI's one error format (`parathinker: error: ...`)."""
    from parathinker.cli import main

    stub = Stub([c for c in cases() if c.pid == "allwrong"])
    url = stub.start()
    try:
        rc = main(["data", "generate", "--base-url", url, "--problems", str(write_problems(tmp_path / "p.jsonl", stub.cases)),
                   "--model", MODEL, "--out", str(tmp_path / "o.jsonl"), "--paths", str(P), "--grade-workers", "0"])
    finally:
        stub.stop()
    err = capsys.readouterr().err
    assert rc == 1 and err.strip().splitlines()[-1] == "parathinker: error: no problem was kept (see the table for why)"
    assert "\r" not in err  # no progress bar outside a terminal
