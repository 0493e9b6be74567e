"""``parathinker eval --base-url``: the harness over HTTP gives the in-process run's answers, and resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from parathinker import LLM
from parathinker.assets import default_model_dir
from parathinker.eval.remote import request_fields
from parathinker.serve.app import build_app
from parathinker.serve.config import BUNDLED_MODEL_NAME, ServeConfig
from parathinker.serve.server import ServerThread

# greedy, so the comparison does not hang on seeds; budgets the bundled model's context holds
COMMON = ["--benchmark", "pathfind", "--limit", "4", "--method", "sequential,majority,parathinker",
          "--paths", "2,4", "--temperature", "0", "--max-path-tokens", "128", "--summary-max-tokens", "48",
          "--no-progress"]


@pytest.fixture(scope="module")
def server():  # noqa: ANN201
    cfg = ServeConfig(port=0)
    with ServerThread(build_app(LLM(None, threads="auto"), cfg), cfg, log_level="error") as s:
        yield s


def _eval(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "parathinker", "eval", *args], capture_output=True, text=True,
                          timeout=600, env=env)


def _answers(out: Path) -> dict:
    recs = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    return {(r["id"], r["method"], r["paths"], r["sample"]): (r["answer"], r["path_answers"], r["correct"])
            for r in recs}


def test_served_eval_equals_in_process_eval(server, tmp_path: Path) -> None:  # noqa: ANN001
    local = _eval("--model", str(default_model_dir()), "--out", str(tmp_path / "local"), *COMMON)
    assert local.returncode == 0, local.stderr
    remote = _eval("--base-url", server.url + "/v1", "--out", str(tmp_path / "remote"), *COMMON)
    assert remote.returncode == 0, remote.stderr
    a, b = _answers(tmp_path / "local"), _answers(tmp_path / "remote")
    assert len(a) == 4 * 5 and a == b  # 4 problems x (sequential, majority P=2/4, parathinker P=2/4)
    assert sum(c for _, _, c in b.values()) > 4  # it solves some: not a comparison of empty answers
    rep = subprocess.run([sys.executable, "-m", "parathinker", "report", str(tmp_path / "remote"), "--no-plots"],
                         capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0 and "parathinker" in rep.stdout


def test_served_eval_resumes_after_a_kill(server, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "run"
    args = ["--base-url", server.url + "/v1", "--out", str(out), *COMMON, "--concurrency", "2"]
    p = subprocess.Popen([sys.executable, "-m", "parathinker", "eval", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    log = out / "samples.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 4):
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    first = len(log.read_text().splitlines())
    assert 4 <= first < 20
    again = _eval(*args)
    assert again.returncode == 0, again.stderr
    keys = [tuple(json.loads(x)[k] for k in ("id", "method", "paths", "sample")) for x in log.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 20  # nothing lost, nothing twice


def test_bad_server_arguments_are_one_line_errors(server, tmp_path: Path) -> None:  # noqa: ANN001
    r = _eval("--base-url", server.url + "/v1", "--served-model", "nope", "--out", str(tmp_path / "x"), *COMMON)
    assert r.returncode != 0 and "does not serve 'nope'" in r.stderr and "Traceback" not in r.stderr
    r = _eval("--base-url", server.url + "/v1", "--out", str(tmp_path / "y"), *COMMON[:-1], "--paths", "9")
    assert r.returncode != 0 and "think tokens" in r.stderr and "Traceback" not in r.stderr
    r = _eval("--base-url", "http://127.0.0.1:9/v1", "--out", str(tmp_path / "z"), *COMMON)
    assert r.returncode != 0 and "cannot list its models" in r.stderr and "Traceback" not in r.stderr
    assert BUNDLED_MODEL_NAME


def test_request_fields_follow_the_engine_seeds() -> None:
    from parathinker import ParallelParams, SamplingParams

    std, extra = request_fields(ParallelParams(num_paths=4), SamplingParams(seed=10), 3)
    assert std["seed"] == 13 and extra["num_paths"] == 4 and extra["as_question"] and extra["return_paths"]
