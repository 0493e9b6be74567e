"""CLI end to end with a fake LLM: eval -> report (table, JSON, plots), tunnel vision, errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from eval_fakes import FakeLLM

from parathinker.errors import ConfigError, DataError
from parathinker.eval import cli
from parathinker.eval.runlog import read_records
from parathinker.eval.tunnel import cut_prefix, tunnel_curve


def _data(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    d = tmp_path / "data"
    golds = {}
    for name, n in (("aime24", 6), ("math500", 4)):
        (d / name).mkdir(parents=True)
        rows = [{"id": i, "problem": f"{name} problem {i}", "answer": str(i * 7)} for i in range(n)]
        (d / name / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        golds.update({r["problem"]: r["answer"] for r in rows})
    return d, golds


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="parathinker")
    cli.register(p.add_subparsers(dest="cmd", required=True))
    args = p.parse_args(argv)
    return args.func(args)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, FakeLLM]:
    d, golds = _data(tmp_path)
    llm = FakeLLM(golds, p_correct=0.5)
    monkeypatch.setattr(cli, "load_llm", lambda model, device, threads="auto": llm)
    return d, llm


def test_eval_then_report(tmp_path: Path, fake: tuple[Path, FakeLLM]) -> None:
    d, llm = fake
    out = tmp_path / "run"
    argv = ["eval", "--model", "fake", "--benchmark", "aime24,math500", "--data-dir", str(d),
            "--method", "sequential,majority,parathinker,reprefill", "--paths", "2,4", "--samples", "3",
            "--vote", "2", "--out", str(out), "--max-path-tokens", "100", "--batch-size", "4", "--no-progress"]
    assert _main(argv) == 0
    n = len(read_records(out / "samples.jsonl"))
    assert n == (6 + 4) * 3 * (1 + 2 + 2 + 2 + 2)
    calls = len(llm.calls)
    assert _main(argv) == 0 and len(llm.calls) == calls  # rerun: nothing to do

    assert _main(["report", str(out), "--bootstrap", "200"]) == 0
    md = (out / "report.md").read_text()
    head = next(line for line in md.splitlines() if line.startswith("| method"))
    assert head == "| method | AIME 2024 | MATH-500 | average |"
    for row in ("| sequential |", "| majority P=2 |", "| parathinker P=4 |", "| reprefill P=2 |",
                "| parathinker+maj2 P=4 |"):
        assert row in md
    assert "maj@k" in md and "tokens per path" in md
    rep = json.loads((out / "report.json").read_text())
    rows = {(r["method"], r["paths"]): r for r in rep["rows"]}
    assert len(rows) == 9 and all(0 <= r["pass1"] <= 100 for r in rows.values())
    # the fake's summary gets better with more paths: the report must show it
    assert rows[("parathinker", 4)]["pass1"] > rows[("sequential", 1)]["pass1"]
    for png in ("accuracy_vs_paths.png", "accuracy_vs_tokens.png", "latency_vs_paths.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tunnel_vision(tmp_path: Path, fake: tuple[Path, FakeLLM]) -> None:
    d, llm = fake
    out = tmp_path / "tv"
    argv = ["eval", "--model", "fake", "--benchmark", "aime24", "--data-dir", str(d), "--tunnel-vision",
            "--samples", "4", "--tunnel-prefixes", "5,10,20", "--out", str(out), "--no-progress",
            "--batch-size", "3"]
    assert _main(argv) == 0
    recs = read_records(out / "tunnel.jsonl")
    sources = [r for r in recs if r["kind"] == "source"]
    assert len(sources) == 6 * 4 and all(r["prefix_tokens"] == 0 for r in sources)
    wrong = [r for r in sources if not r["correct"]]
    conts = [r for r in recs if r["kind"] == "continuation"]
    # every wrong source: a fresh sample (L = 0) and a continuation per prefix it is longer than
    assert wrong and len(conts) == sum(1 for r in wrong for n in (0, 5, 10, 20) if n == 0 or r["num_tokens"] > n)
    source_seeds = {r["seed"] for r in sources}
    assert not source_seeds & {r["seed"] for r in conts}  # never the source's draws again
    fresh = [r for r in conts if r["prefix_tokens"] == 0]
    assert len(fresh) == len(wrong) and any(r["correct"] for r in fresh)  # L = 0 is not 0 by construction
    assert all(mode == "sequential" for _, mode, _, _ in llm.calls)
    calls = len(llm.calls)
    assert _main(argv) == 0 and len(llm.calls) == calls  # resumable too
    curve = tunnel_curve(recs)
    assert [c["prefix_tokens"] for c in curve] == [0, 5, 10, 20]
    assert _main(["report", str(out)]) == 0
    assert (out / "tunnel_vision.png").exists()
    assert "Tunnel vision" in (out / "report.md").read_text()


def test_cut_prefix() -> None:
    assert cut_prefix("abcdefghij", 10, 3) == "abc"
    assert cut_prefix("abcdefghij", 5, 10) == "abcdefghij"

    class Tok:
        def encode(self, text: str, add_special_tokens: bool = False) -> list[str]:
            return text.split()

        def decode(self, ids: list[str]) -> str:
            return " ".join(ids)

    assert cut_prefix("one two three four", 4, 2, Tok()) == "one two"


@pytest.mark.parametrize(
    ("extra", "error", "pattern"),
    [
        (["--method", "best"], ConfigError, "unknown method 'best'"),
        (["--paths", "2,x"], ConfigError, "--paths"),
        (["--shard", "2/2"], ConfigError, "--shard"),
        (["--temperature", "-1"], ConfigError, "temperature"),
        (["--termination", "3", "--paths", "2", "--method", "parathinker"], ConfigError, "termination"),
        (["--benchmark", "nope"], DataError, "not found in"),
    ],
)
def test_bad_input_raises_one_line_errors(tmp_path: Path, fake: tuple[Path, FakeLLM], extra: list[str],
                                          error: type, pattern: str) -> None:
    d, _ = fake
    argv = ["eval", "--model", "fake", "--benchmark", "aime24", "--data-dir", str(d),
            "--out", str(tmp_path / "o"), "--no-progress", *extra]
    with pytest.raises(error, match=pattern) as e:
        _main(argv)
    assert "\n" not in str(e.value)


def test_report_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such run folder"):
        _main(["report", str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="run `parathinker eval` first"):
        _main(["report", str(tmp_path / "empty")])


def test_load_llm_without_engine_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import parathinker

    # no engine in this install: parathinker.LLM (loaded on first use from parathinker.engine) cannot be imported
    if "LLM" in vars(parathinker):
        monkeypatch.delattr(parathinker, "LLM")
    monkeypatch.delattr(parathinker, "engine", raising=False)
    monkeypatch.setitem(sys.modules, "parathinker.engine", None)
    with pytest.raises(ConfigError, match="engine"):
        cli.load_llm("x", None)
