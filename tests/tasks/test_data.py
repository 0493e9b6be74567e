"""The dataset writer: formats, determinism, train/test disjointness, the CLI hooks, stats."""

from __future__ import annotations

import argparse
import json

import pytest

from parathinker.errors import ConfigError
from parathinker.tasks.cli import register
from parathinker.tasks.pathfind.data import (
    DataConfig,
    grade,
    load_test,
    make_data,
    split_problems,
    verify_record,
)
from parathinker.tasks.pathfind.problem import GenConfig
from parathinker.tasks.pathfind.stats import compute_stats
from parathinker.tasks.pathfind.teacher import extract_boxed


def _read(path):
    return [json.loads(line) for line in open(path)]


def test_make_data_writes_the_sft_format(tmp_path):
    meta = make_data(tmp_path, 40, 25, 3, GenConfig(), DataConfig())
    assert meta["train"] == 40 and meta["test"] == 25
    train = _read(tmp_path / "train.jsonl")
    seq = _read(tmp_path / "train_seq.jsonl")
    test = _read(tmp_path / "test.jsonl")
    assert len(train) == 40 and len(test) == 25
    assert sum(len(ex["paths"]) for ex in train) == len(seq) == meta["train_paths"]
    for ex in train:
        assert set(ex) == {"id", "prompt", "paths", "summary", "answer"}
        assert 1 <= len(ex["paths"]) <= 6
        assert all("<think" not in p and "</think" not in p for p in ex["paths"])
        assert "<summary>" not in ex["summary"] and extract_boxed(ex["summary"])
    for s in seq:
        assert set(s) == {"id", "prompt", "completion", "answer"} and extract_boxed(s["completion"])
    for rec, prob in load_test(tmp_path / "test.jsonl"):
        assert {"id", "prompt", "answer", "start", "goal", "edges"} <= set(rec)
        assert prob.prompt == rec["prompt"] and verify_record(rec, rec["answer"])
        assert not verify_record(rec, rec["start"] + " " + rec["goal"])
        assert grade(rec, "By analyzing ... The final answer is \\boxed{ " + rec["answer"] + " }")
        assert not grade(rec, "no box " + rec["answer"])
    assert (tmp_path / "tokenizer" / "tokenizer.json").exists()


def test_make_data_is_deterministic(tmp_path):
    for d in ("a", "b"):
        make_data(tmp_path / d, 15, 5, 11, GenConfig(), DataConfig())
    for f in ("train.jsonl", "train_seq.jsonl", "test.jsonl"):
        assert (tmp_path / "a" / f).read_text() == (tmp_path / "b" / f).read_text()


def test_train_and_test_never_overlap_even_up_to_renaming():
    # small problems collide often, so the dedupe is exercised
    gen = GenConfig(min_depth=2, max_depth=3, choices=(2, 3, 4), subtree_fork=0.0)  # ~40 structures
    train, test = split_problems(0, 20, 10, gen)
    tr = {p.canonical() for p in train}
    te = {p.canonical() for p in test}
    assert len(tr) == 20 and len(te) == 10 and not tr & te
    assert not {p.prompt for p in train} & {p.prompt for p in test}


def test_too_few_distinct_problems_is_an_error_not_a_hang():
    gen = GenConfig(min_depth=2, max_depth=2, choices=(2,), dead_end_jitter=0, subtree_fork=0.0)
    with pytest.raises(ConfigError, match="too few problems"):
        split_problems(0, 5, 5, gen)


def test_cli_register_sets_func_on_every_command(tmp_path):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["task", "make-data", "--out", str(tmp_path), "--train", "3", "--test", "2"])
    assert args.func(args) == 0 and len(_read(tmp_path / "train.jsonl")) == 3
    for argv in (["task", "sample"], ["task", "stats", "--n", "5"], ["task", "make-tokenizer", "--out", "x"]):
        assert callable(parser.parse_args(argv).func)


def test_teacher_stats_are_consistent():
    st = compute_stats(60, 0, GenConfig(), DataConfig())
    for p in (1, 2, 4, 8):
        assert st.summary[p] == st.oracle[p]  # the teacher summary picks a succeeding path when there is one
        assert st.majority[p] <= st.oracle[p] and st.first_finish[p] <= st.oracle[p]
    assert st.oracle[1] <= st.oracle[2] <= st.oracle[4] <= st.oracle[8]
    assert st.tokens["path"][1] <= 150
    assert "| 8 |" in st.markdown()
