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
        (["--paths", "0"], "num_paths must be >= 1"),
        (["--paths", "9"], "at most 8 paths"),
        (["--max-path-tokens", "-1"], "max_path_tokens must be >= 1"),
        (["--termination", "most"], "termination must be"),
        (["--temperature", "-1"], "temperature must be >= 0"),
        (["--max-path-tokens", "100000"], "past the model's context"),
        (["--num-pages", "4", "--max-path-tokens", "200"], "raise the KV memory budget"),
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
