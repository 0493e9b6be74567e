"""One rule for request parameters at every entry point: what the user set > the checkpoint's
parathinker.json > the library default. The bundled model's parathinker.json sets temperature 1.0,
top_p 1.0, max_path_tokens 128, summary_max_tokens 48; the library defaults are 0.6, 0.95, 16384,
1024, and the model's context is 2048: a 16384-token path budget cannot run on it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from parathinker import LLM, ParallelParams, SamplingParams
from parathinker.assets import default_model_dir
from parathinker.cli import main
from parathinker.errors import PromptTooLongError
from parathinker.params import resolve, set_fields

CKPT = json.loads((default_model_dir() / "parathinker.json").read_text())
Q = ("graph : 19 > 72 , 73 > 48 , 77 > 49 , 96 > 98 , 52 > 73 , 52 > 77 , 19 > 26 , 62 > 96 , 77 > 62 , "
     "35 > 45 , 93 > 10 , 48 > 57 , 49 > 51 , 48 > 93 , 52 > 35 , 45 > 19 ; find path 52 to 57")  # the README's


def test_checkpoint_file_is_what_these_tests_assume() -> None:
    assert CKPT["sampling"] == {"temperature": 1.0, "top_p": 1.0}
    assert CKPT["parallel"] == {"max_path_tokens": 128, "summary_max_tokens": 48}
    lib_pp, lib_sp = ParallelParams(), SamplingParams()
    assert (lib_sp.temperature, lib_sp.top_p, lib_pp.max_path_tokens) == (0.6, 0.95, 16384)


def test_params_remember_what_the_caller_set() -> None:
    assert set_fields(ParallelParams()) == frozenset()
    assert set_fields(ParallelParams(num_paths=8)) == {"num_paths"}
    assert set_fields(SamplingParams(0.6)) == {"temperature"}  # positional counts too
    # dataclasses.replace keeps what was set and adds what it changed
    p = dataclasses.replace(ParallelParams(num_paths=8), termination="half")
    assert set_fields(p) == {"num_paths", "termination"}
    assert ParallelParams(num_paths=8) == ParallelParams()  # the bookkeeping does not change equality


def test_resolve_user_over_checkpoint_over_library() -> None:
    ck = CKPT["parallel"]
    # a value typed equal to the library default still wins over the checkpoint
    pp = resolve(ParallelParams, ParallelParams(num_paths=4, max_path_tokens=16384), ck)
    assert (pp.num_paths, pp.max_path_tokens, pp.summary_max_tokens, pp.termination) == (4, 16384, 48, "first")
    assert resolve(ParallelParams, None, ck).max_path_tokens == 128
    assert resolve(ParallelParams, None, None) == ParallelParams()
    again = resolve(ParallelParams, pp, {"max_path_tokens": 7})
    assert again == pp  # a resolved object counts all its resolved fields as set


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(None, threads="auto")


def test_python_generate_keeps_the_checkpoints_budgets(llm: LLM) -> None:
    """LLM().generate(q, ParallelParams(num_paths=8)) used to throw the budgets away (16384 > context)."""
    pp, sp = llm._resolve(ParallelParams(num_paths=8), SamplingParams(seed=3))
    assert (pp.num_paths, pp.max_path_tokens, pp.summary_max_tokens) == (8, 128, 48)
    assert (sp.temperature, sp.top_p, sp.seed) == (1.0, 1.0, 3)
    assert pp.summary_prefix == CKPT["summary_prefix"]
    (out,) = llm.generate(Q, ParallelParams(num_paths=8), SamplingParams(seed=0))
    assert len(out.paths) == 8 and max(p.num_tokens for p in out.paths) <= 128
    # what the Python user set wins, even when it equals the library default
    pp, sp = llm._resolve(ParallelParams(max_path_tokens=16384), SamplingParams(temperature=0.6))
    assert (pp.max_path_tokens, sp.temperature, sp.top_p) == (16384, 0.6, 1.0)
    with pytest.raises(PromptTooLongError, match="context"):
        llm.generate(Q, ParallelParams(max_path_tokens=16384))


def test_cli_generate_typed_options_win_even_at_library_defaults(monkeypatch, capsys) -> None:
    seen = {}

    def fake_generate(self, prompts, parallel=None, sampling=None, **kw):
        seen["pp"], seen["sp"] = self._resolve(parallel, sampling)
        return []

    monkeypatch.setattr(LLM, "generate", fake_generate)
    assert main(["generate", Q, "--temperature", "0.6", "--top-p", "0.95", "--max-path-tokens", "16384"]) == 0
    assert (seen["sp"].temperature, seen["sp"].top_p, seen["pp"].max_path_tokens) == (0.6, 0.95, 16384)
    assert seen["pp"].summary_max_tokens == 48  # not typed: the checkpoint's
    assert main(["generate", Q, "--paths", "4"]) == 0
    assert (seen["sp"].temperature, seen["pp"].max_path_tokens, seen["pp"].num_paths) == (1.0, 128, 4)


def test_cli_generate_typed_budget_reaches_the_engine(capsys) -> None:
    """Typed --max-path-tokens 16384 (the library default) is used: past the bundled model's context."""
    assert main(["generate", Q, "--max-path-tokens", "16384"]) == 2
    err = capsys.readouterr().err
    assert "past the model's context" in err and err.startswith("parathinker: error:")


def test_cli_help_says_where_defaults_come_from(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--temperature TEMPERATURE 0 = greedy (default: the checkpoint's parathinker.json, else 0.6)" in out
    assert "(default: the checkpoint's parathinker.json, else budget + 2)" in out
    assert "(default: None)" not in out


def _eval(out: Path, *extra: str) -> int:
    return main(["eval", "--benchmark", "pathfind", "--model", str(default_model_dir()), "--limit", "2",
                 "--method", "parathinker", "--paths", "2", "--out", str(out), "--no-progress", *extra])


def test_cli_eval_uses_the_checkpoints_defaults_and_a_failed_start_blocks_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    # typed budget past the context: fails before the first sample, leaves nothing that blocks
    assert _eval(out, "--max-path-tokens", "16384", "--temperature", "0.6") == 2
    assert "--method parathinker --paths 2" in capsys.readouterr().err
    assert not list(out.glob("*.jsonl")) or all(p.stat().st_size == 0 for p in out.glob("*.jsonl"))
    # the README's command, corrected in the same --out: the checkpoint's budgets and sampling
    assert _eval(out) == 0
    run = json.loads((out / "run.json").read_text())
    assert (run["temperature"], run["top_p"], run["max_path_tokens"], run["summary_max_tokens"]) == (1.0, 1.0, 128, 48)
    recs = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(max(r["path_tokens"]) <= 128 for r in recs)
    # typed options win; a folder holding samples refuses other settings
    assert _eval(out, "--temperature", "0.6") == 2
    assert "other settings" in capsys.readouterr().err
    out2 = tmp_path / "run2"
    assert _eval(out2, "--temperature", "0.6", "--max-path-tokens", "64") == 0
    run2 = json.loads((out2 / "run.json").read_text())
    assert (run2["temperature"], run2["top_p"], run2["max_path_tokens"]) == (0.6, 1.0, 64)
