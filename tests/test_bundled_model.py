"""Regression tests of the shipped model (src/parathinker/assets/default/), fast on CPU.

Problems: the last 100 of the task's held-out set (``make-data --seed 0 --test 1000``, disjoint
from the training problems; the docs' table uses the first 500), sampled with a fixed seed.

What the shipped checkpoint does (measured, docs/bundled-model.md): it loads by default, writes
the ParaThinker format (P paths that start at the start node, each ended by its own end token or
cut by First-Finish, a summary with a \\boxed{} route). What it does not do yet: solve the
problems (it has not learned the edge look-ups), so the comparison the issue asks for
(ParaThinker@4 beats one sequential path by a clear margin) is a strict xfail: it fails the suite
as soon as a retrained model passes it, so that the marker and thresholds get updated.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from parathinker import LLM, ParallelParams, SamplingParams
from parathinker.assets import DEFAULT_MODEL, default_model_dir
from parathinker.eval.benchmarks import pathfind_default

N, P, SEED = 100, 4, 1234
BUDGET = dict(max_path_tokens=128, summary_max_tokens=48)
# the comparison the issue asks for (ParaThinker@4 - ParaThinker@1, accuracy points / 100)
TARGET_MARGIN = 0.10


@pytest.fixture(scope="module")
def problems() -> list:
    return pathfind_default(1000)[-N:]


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(None, threads="auto")  # the bundled default (1M parameters: one CPU thread is fastest)


@pytest.fixture(scope="module")
def pt_run(llm: LLM, problems: list) -> tuple[float, list]:
    """ParaThinker@P on the fixed subset, computed once for the tests below."""
    return _run(llm, problems, P)


def _run(llm: LLM, problems: list, p: int) -> tuple[float, list]:
    outs = llm.generate([q.problem for q in problems], ParallelParams(num_paths=p, **BUDGET),
                        SamplingParams(temperature=1.0, top_p=1.0, seed=SEED))
    right = [q.check(o.answer) for q, o in zip(problems, outs)]
    return sum(right) / len(right), outs


def test_bundled_files() -> None:
    assert default_model_dir() == DEFAULT_MODEL
    for f in ("config.json", "model.safetensors", "tokenizer.json", "parathinker.json"):
        assert (DEFAULT_MODEL / f).is_file(), f
    assert sum(f.stat().st_size for f in DEFAULT_MODEL.iterdir()) <= 25 * 2**20
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL)
    assert len(tok) == 148 and tok.convert_tokens_to_ids("<think4>") != tok.unk_token_id


def test_parathinker_format(pt_run: tuple[float, list], problems: list) -> None:
    _, outs = pt_run
    starts = [q.record["start"] for q in problems]
    assert all(len(o.paths) == P for o in outs)
    # First-Finish: at least one path ended by its own end token, the others cut or ended
    assert all(any(x.finish_reason == "end" for x in o.paths) for o in outs)
    assert all(x.finish_reason in ("end", "cut") for o in outs for x in o.paths)
    # every try starts at the start node (measured: 398 of 400 paths)
    first = [x.text.split()[:2] for o in outs for x in o.paths]
    ok = sum(w == ["T1", s] for w, s in zip(first, [s for s in starts for _ in range(P)]))
    assert ok >= 0.9 * N * P, ok
    # the summary states a route in a box (measured: all 100)
    assert sum("\\boxed{" in (o.summary.text or "") for o in outs) >= 0.95 * N


def test_generate_cli_default_model(problems: list) -> None:
    q = problems[0].problem
    r = subprocess.run([sys.executable, "-m", "parathinker.cli", "generate", q, "--seed", "0", "--paths", "2"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "path 1" in r.stdout and "path 2" in r.stdout and "summary" in r.stdout and "answer:" in r.stdout


@pytest.mark.xfail(strict=True, reason="the shipped model has not learned the edge look-ups yet: "
                   "ParaThinker@4 and one path are both ~0 (docs/bundled-model.md)")
def test_parathinker_beats_one_path(llm: LLM, problems: list, pt_run: tuple[float, list]) -> None:
    acc_pt, _ = pt_run
    acc_1, _ = _run(llm, problems, 1)
    assert acc_pt - acc_1 >= TARGET_MARGIN, f"ParaThinker@{P} {acc_pt:.2f}, one path {acc_1:.2f}"
