"""Regression tests of the shipped models (src/parathinker/assets/), fast on CPU.

Problems: the last 100 of the task's held-out set (``make-data --seed 0 --test 1000``, disjoint
from the training problems; the docs' table uses the first 500), sampled with a fixed seed.

``default/`` is the bundled ParaThinker model, ``sequential/`` its sequential control (same data,
same recipe, one path + answer per example; docs/bundled-model.md). Measured on this subset with
seed 1234 (2026-11-28): ParaThinker@4 0.83, ParaThinker@1 0.34, sequential 0.47, majority@4 of the
sequential model 0.60. The thresholds below leave room for platform differences in sampling.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from parathinker import LLM, ParallelParams, SamplingParams
from parathinker.assets import DEFAULT_MODEL, SEQUENTIAL_MODEL, default_model_dir
from parathinker.eval.benchmarks import pathfind_default
from parathinker.tasks.pathfind.problem import Problem, verify

N, P, SEED = 100, 4, 1234
BUDGET = dict(max_path_tokens=128, summary_max_tokens=48)
README_PROBLEM = ("graph : 19 > 72 , 73 > 48 , 77 > 49 , 96 > 98 , 52 > 73 , 52 > 77 , 19 > 26 , 62 > 96 , 77 > 62 , "
                  "35 > 45 , 93 > 10 , 48 > 57 , 49 > 51 , 48 > 93 , 52 > 35 , 45 > 19 ; find path 52 to 57")
# the comparison the issue asks for, in accuracy / 100 (measured margins: 0.36 and 0.23)
MARGIN_SEQUENTIAL, MARGIN_MAJORITY = 0.20, 0.10


@pytest.fixture(scope="module")
def problems() -> list:
    return pathfind_default(1000)[-N:]


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(None, threads="auto")  # the bundled default (3M parameters: one CPU thread is fastest)


@pytest.fixture(scope="module")
def seq_llm() -> LLM:
    return LLM(SEQUENTIAL_MODEL, threads="auto")


@pytest.fixture(scope="module")
def pt_run(llm: LLM, problems: list) -> tuple[float, list]:
    """ParaThinker@P on the fixed subset, computed once for the tests below."""
    return _run(llm, problems, P)


def _run(llm: LLM, problems: list, p: int, mode: str = "parathinker") -> tuple[float, list]:
    outs = llm.generate([q.problem for q in problems], ParallelParams(num_paths=p, mode=mode, **BUDGET),
                        SamplingParams(temperature=1.0, top_p=1.0, seed=SEED))
    right = [q.check(o.answer) for q, o in zip(problems, outs)]
    return sum(right) / len(right), outs


def test_bundled_files() -> None:
    assert default_model_dir() == DEFAULT_MODEL
    from transformers import AutoTokenizer

    for d in (DEFAULT_MODEL, SEQUENTIAL_MODEL):
        for f in ("config.json", "model.safetensors", "tokenizer.json", "parathinker.json"):
            assert (d / f).is_file(), d / f
        assert (d / "model.safetensors").stat().st_size <= 25 * 2**20
        tok = AutoTokenizer.from_pretrained(d)
        assert len(tok) == 148 and tok.convert_tokens_to_ids("<think4>") != tok.unk_token_id


def test_parathinker_format(pt_run: tuple[float, list], problems: list) -> None:
    _, outs = pt_run
    starts = [q.record["start"] for q in problems]
    assert all(len(o.paths) == P for o in outs)
    # First-Finish: at least one path ended by its own end token, the others cut or ended
    assert all(any(x.finish_reason == "end" for x in o.paths) for o in outs)
    assert all(x.finish_reason in ("end", "cut") for o in outs for x in o.paths)
    # every try starts at the start node
    first = [x.text.split()[:2] for o in outs for x in o.paths]
    ok = sum(w == ["T1", s] for w, s in zip(first, [s for s in starts for _ in range(P)]))
    assert ok >= 0.9 * N * P, ok
    # the summary states a route in a box
    assert sum("\\boxed{" in (o.summary.text or "") for o in outs) >= 0.95 * N


def test_generate_cli_default_model_solves_the_readme_problem() -> None:
    """The README's first command: no --model, the checkpoint's defaults (P = 8, First-Finish)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    q = README_PROBLEM
    assert f'parathinker generate "{q}" --seed 0' in readme
    assert verify(Problem.from_json(parse_problem(q)), "52 73 48 57")
    r = subprocess.run([sys.executable, "-m", "parathinker", "generate", q, "--seed", "0"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert all(f"path {i}" in r.stdout for i in range(1, 9)) and "summary" in r.stdout
    assert "answer: 52 73 48 57" in r.stdout, r.stdout[-1500:]


def parse_problem(prompt: str) -> dict:
    """``graph : a > b , ... ; find path s to g`` -> Problem.from_json's dict."""
    graph, ask = prompt.removeprefix("graph : ").split(" ; find path ")
    start, goal = ask.split(" to ")
    return {"start": start, "goal": goal, "edges": [e.split(" > ") for e in graph.split(" , ")]}


def test_parathinker_beats_sequential_and_majority(seq_llm: LLM, problems: list, pt_run: tuple[float, list]) -> None:
    """The paper's claim on the shipped models: same per-path budget, P=4."""
    acc_pt, _ = pt_run
    acc_seq, _ = _run(seq_llm, problems, 1, "sequential")
    acc_maj, _ = _run(seq_llm, problems, P, "majority")
    msg = f"ParaThinker@{P} {acc_pt:.2f}, sequential {acc_seq:.2f}, majority@{P} {acc_maj:.2f}"
    assert acc_pt - acc_seq >= MARGIN_SEQUENTIAL, msg
    assert acc_pt - acc_maj >= MARGIN_MAJORITY, msg
    assert acc_pt >= 0.7, msg
