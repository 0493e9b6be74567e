"""The command line: one clear line and a non-zero exit on bad input; a real run prints paths and summary."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from parathinker.cli import main


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "parathinker.cli", *args], capture_output=True, text=True, timeout=300)


def test_generate_prints_paths_summary_answer_and_counts(tiny_qwen2):
    r = _run("generate", "what is 1 + 2 ?", "--model", str(tiny_qwen2), "--paths", "3", "--max-path-tokens", "8",
             "--summary-max-tokens", "4", "--raw", "--seed", "1", "--kv-cache-memory", "0.05")
    assert r.returncode == 0, r.stderr
    for word in ("path 1:", "path 3:", "summary", "answer:", "prompt prefill"):
        assert word in r.stdout
    assert "Traceback" not in r.stderr


def test_generate_json(tiny_qwen2, capsys):
    rc = main(["generate", "what is", "the goal", "--model", str(tiny_qwen2), "--paths", "2", "--max-path-tokens", "5",
               "--summary-max-tokens", "3", "--raw", "--seed", "0", "--kv-cache-memory", "0.05", "--json",
               "--mode", "reprefill"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 2 and all(len(o["paths"]) == 2 and o["summary"] for o in out)
    assert out[0]["stats"]["reprefill_tokens"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/nonexistent/dir"], "no such model directory"),
        (["--paths", "0"], "--paths must be >= 1"),
        (["--paths", "9"], "--paths 9 but the tokenizer has only <think1>..<think8>: use at most 8 paths"),
        (["--max-path-tokens", "-1"], "--max-path-tokens must be >= 1"),
        (["--termination", "most"], "termination must be"),
        (["--paths", "4", "--termination", "5"], "--termination 5 needs 5 finished paths, more than --paths 4"),
        (["--temperature", "-1"], "temperature must be >= 0"),
        (["--top-p", "2"], "--top-p must be in (0, 1]"),
        (["--max-path-tokens", "100000"], "past the model's context of 4096: lower --max-path-tokens / --summary-max-tokens"),
        (["--num-pages", "4", "--max-path-tokens", "200"], "has 3: raise --kv-cache-memory (GiB) or lower the token "
                                                          "budgets (--max-path-tokens, --summary-max-tokens)"),
    ],
)
def test_bad_input_is_one_clear_line(tiny_qwen2, capsys, args, message):
    base = ["generate", "what", "--model", str(tiny_qwen2), "--raw", "--kv-cache-memory", "0.05",
            "--max-path-tokens", "16"]
    rc = main(base + args)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_unsupported_architecture_and_missing_control_tokens(tmp_path, tiny_qwen2, capsys):
    import shutil

    bad = tmp_path / "gpt2"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert main(["generate", "x", "--model", str(bad)]) == 2
    assert "unsupported architecture 'gpt2'" in capsys.readouterr().err

    plain = tmp_path / "plain"
    shutil.copytree(tiny_qwen2, plain)
    from helpers import make_tokenizer

    make_tokenizer(plain, control=False)
    assert main(["generate", "what", "--model", str(plain), "--raw", "--kv-cache-memory", "0.05",
                 "--max-path-tokens", "8"]) == 2
    assert "parathinker prepare" in capsys.readouterr().err
    # plain modes still work on such a model
    assert main(["generate", "what", "--model", str(plain), "--raw", "--kv-cache-memory", "0.05",
                 "--max-path-tokens", "4", "--mode", "majority", "--paths", "3"]) == 0
    capsys.readouterr()
    # eval with the default methods fails on parathinker before running sequential and majority
    bench = tmp_path / "b.jsonl"
    bench.write_text(json.dumps({"problem": "what", "answer": "1"}) + "\n")
    out = tmp_path / "ev"
    assert main(["eval", "--model", str(plain), "--benchmark", str(bench), "--out", str(out), "--paths", "2",
                 "--max-path-tokens", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("parathinker: error: --method parathinker --paths 2:") and err.rstrip().endswith(
        "or run --method sequential,majority") and "mode=" not in err
    assert not any(p.stat().st_size for p in out.glob("*.jsonl"))  # not one sample was spent


def test_first_hour_errors_are_one_line(tmp_path, capsys):
    """What a new user hit (issue 14): each is one `parathinker: error:` line and a non-zero exit."""
    from parathinker.eval.benchmarks import pathfind_default

    def err_of(argv):
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc != 0 and err.startswith("parathinker: error:") and err.count("\n") == 1, err
        assert "Traceback" not in err
        return err

    with pytest.raises(SystemExit) as e:
        main(["generate", "q", "--threads", "zero"])
    assert e.value.code == 2 and "--threads: must be a number of threads or auto" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "no examples" in err_of(["data", "check", str(empty)])
    # task check: unknown id, malformed line; accuracy over the whole test set
    test = tmp_path / "test.jsonl"
    probs = pathfind_default(5)
    test.write_text("".join(json.dumps({"id": p.id, **p.record}) + "\n" for p in probs))
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"id": "nope", "answer": "1 2"}) + "\n")
    assert "preds.jsonl:1: id 'nope' is not in" in err_of(["task", "check", "--test", str(test), "--predictions", str(preds)])
    preds.write_text("{not json\n")
    assert "preds.jsonl:1: not valid JSON" in err_of(["task", "check", "--test", str(test), "--predictions", str(preds)])
    right = {"id": probs[0].id, "answer": probs[0].answer}
    preds.write_text(json.dumps(right) + "\n" + json.dumps(right) + "\n")
    assert "predicted twice" in err_of(["task", "check", "--test", str(test), "--predictions", str(preds)])
    preds.write_text(json.dumps(right) + "\n")
    assert main(["task", "check", "--test", str(test), "--predictions", str(preds)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 5 and res["correct"] == 1 and res["accuracy"] == 0.2


def test_eval_help_and_threads(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "pathfind" in out.rsplit("--benchmark BENCHMARK", 1)[1][:300] and "--threads THREADS" in out


def test_library_errors_name_fields_and_the_cli_names_its_flags(capsys):
    """The same mistake, told to each caller in what it can change: a Python (or HTTP) user gets the
    parameter's field name, a command-line user the option (issue 14: no CLI flags in library errors)."""
    from parathinker import LLM, ParallelParams
    from parathinker.errors import ConfigError, PromptTooLongError

    llm = LLM(None, threads="auto")
    with pytest.raises(PromptTooLongError) as e:
        llm.generate("graph : 1 > 2 ; find path 1 to 2", ParallelParams(max_path_tokens=5000))
    assert "lower max_path_tokens / summary_max_tokens" in str(e.value) and "--" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^termination=5 needs 5 finished paths, more than num_paths=4"):
        ParallelParams(num_paths=4, termination=5)
    with pytest.raises(ConfigError, match=r"^num_paths must be >= 1"):
        ParallelParams(num_paths=0)
    assert main(["generate", "graph : 1 > 2 ; find path 1 to 2", "--max-path-tokens", "5000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("parathinker: error: prompt (") and "lower --max-path-tokens / --summary-max-tokens" in err


def test_score_with_control_tokens_in_a_body_is_a_clear_error():
    from parathinker import LLM
    from parathinker.errors import ConfigError

    llm = LLM(None, threads="auto")
    c = llm.control
    plain = [t for t in range(len(llm.tokenizer)) if t not in set(c.all_ids)][5:10]
    with pytest.raises(ConfigError, match=r"path 2 contains the control token '</think1>'"):
        llm.score(plain[:3], [plain[3:], [plain[3], c.think_close[0]]], [plain[4]])


def test_a_prompt_the_model_cannot_read_warns():
    r = _run("generate", "What is the capital of France?", "--seed", "0", "--paths", "2")
    assert r.returncode == 0, r.stderr
    assert "parathinker: warning: a prompt has words unknown to this model's vocabulary" in r.stderr
    assert "Traceback" not in r.stderr and "\r" not in r.stderr  # no progress bar in a log


def test_the_bundled_generate_is_quiet_in_a_log():
    """stderr not a terminal: no warning (dtype deprecation, the tokenizer's own length limit), no bar;
    a prompt past the context is one error line, not the tokenizer's misleading length warning first."""
    q = ("graph : 19 > 72 , 73 > 48 , 77 > 49 , 96 > 98 , 52 > 73 , 52 > 77 , 19 > 26 , 62 > 96 , 77 > 62 , "
         "35 > 45 , 93 > 10 , 48 > 57 , 49 > 51 , 48 > 93 , 52 > 35 , 45 > 19 ; find path 52 to 57")
    r = _run("generate", q, "--seed", "0")
    assert r.returncode == 0 and r.stderr == "" and "answer: 52 73 48 57" in r.stdout, r.stderr
    r = _run("generate", "graph : " + "10 > 11 , " * 1200 + "10 > 12 ; find path 10 to 12")
    assert r.returncode == 2 and r.stderr.startswith("parathinker: error: the prompt has ") and r.stderr.count("\n") == 1


def test_progress_bar_ends_full():
    """First-Finish leaves most of the budget unused: the bar still ends at 100%, not 76%."""
    import contextlib
    import io

    from parathinker import LLM

    q = ("graph : 19 > 72 , 73 > 48 , 77 > 49 , 96 > 98 , 52 > 73 , 52 > 77 , 19 > 26 , 62 > 96 , 77 > 62 , "
         "35 > 45 , 93 > 10 , 48 > 57 , 49 > 51 , 48 > 93 , 52 > 35 , 45 > 19 ; find path 52 to 57")
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        (out,) = LLM(None, threads="auto").generate(q, progress=True)
    frames = [f for f in buf.getvalue().split("\r") if "%|" in f]
    assert max(p.num_tokens for p in out.paths) < 128 and frames[-1].split("%")[0].endswith("100")


def test_eval_termination_is_checked_against_every_p_at_once(tmp_path, capsys, monkeypatch):
    """`eval --termination k` with a P < k in --paths: one line before the model loads, no folder made."""
    from parathinker.assets import default_model_dir
    from parathinker.eval import cli as eval_cli

    monkeypatch.setattr(eval_cli, "load_llm", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "ev"
    argv = ["eval", "--benchmark", "pathfind", "--model", str(default_model_dir()), "--limit", "2", "--out", str(out),
            "--termination", "5", "--paths", "1,8,4", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == ("parathinker: error: --termination 5 needs 5 finished paths, but --paths has P=1, 4 (for --method "
                   "parathinker): lower --termination or drop those P from --paths\n")
    assert not out.exists()
    # the single-path methods take no termination: they run whatever it is
    monkeypatch.undo()
    assert main([*argv[:-5], "--termination", "5", "--paths", "1", "--method", "sequential", "--no-progress"]) == 0


def test_every_entry_point_has_the_one_error_format(tmp_path, capsys):
    """`prepare` (train/cli.py's own handler), `python -m parathinker.tasks.pathfind` and
    `python -m parathinker.train.cli` print `parathinker: error: ...` on one line, options named as flags."""
    from parathinker.tasks.pathfind.cli import main as pathfind_main
    from parathinker.train.cli import main as train_main

    assert main(["prepare", "--model", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("parathinker: error: ") and "(give --model DIR, a Hugging Face" in err and err.count("\n") == 1
    for entry, argv in ((pathfind_main, ["check"]), (train_main, ["train", "--data", "x"])):
        with pytest.raises(SystemExit) as e:
            entry(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("parathinker: error: the following arguments are required")
        assert err.count("\n") == 1 and "usage:" not in err
