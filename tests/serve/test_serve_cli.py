"""``parathinker serve`` as a process: bad options are one line before the model loads; a running
server answers, and SIGTERM drains it and exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest
from helpers import free_port, wait_healthy

from parathinker.cli import main


@pytest.mark.parametrize(("args", "message"), [
    (["--port", "70000"], "port must be in 0..65535"),
    (["--max-waiting", "0"], "--max-waiting must be >= 1"),
    (["--api-key", ""], "--api-key is empty"),
    (["--page-size", "0"], "--page-size must be >= 1"),
    (["--model", "/nonexistent/dir"], "no such model directory"),
    (["--attention", "bogus"], "attention must be auto, triton, cascade or reference"),
    (["--data-parallel-size", "0"], "--data-parallel-size must be >= 1"),
    (["--data-parallel-size", "2", "--device", "cuda"], "runs engine processes on the CPU"),
    (["--data-parallel-size", "2", "--replicas", "2"], "do not mix"),
])
def test_bad_options_are_one_line(capsys, args: list[str], message: str) -> None:
    rc = main(["serve", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_help_lists_the_options() -> None:
    r = subprocess.run([sys.executable, "-m", "parathinker", "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for opt in ("--model", "--host", "--port", "--served-model-name", "--api-key", "--max-waiting", "--device",
                "--num-pages", "--threads", "--attention", "--no-fused-decode", "--no-packed-weights"):
        assert opt in r.stdout, opt


@pytest.mark.parametrize("extra", [[], ["--data-parallel-size", "2"]], ids=["one-engine", "two-engine-processes"])
def test_serves_then_sigterm_drains_and_exits_cleanly(extra: list[str]) -> None:
    import http.client

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "parathinker", "serve", "--port", str(port), "--threads", "1",
                             "--served-model-name", "pf", "--log-level", "warning", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    question = "graph : 10 > 11 , 11 > 12 , 10 > 13 ; find path 10 to 12"
    try:
        wait_healthy(proc, port, "parathinker serve", timeout=120)
        body = json.dumps({"model": "pf", "messages": [{"role": "user", "content": question}], "seed": 0}).encode()
        req = urllib.request.Request(url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            out = json.loads(r.read())
        assert out["model"] == "pf" and out["choices"][0]["message"]["content"]
        # a stream in flight when SIGTERM arrives is finished, not cut
        h = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        h.request("POST", "/v1/chat/completions", json.dumps(
            {"model": "pf", "messages": [{"role": "user", "content": question}], "seed": 1, "stream": True,
             "n": 4, "max_path_tokens": 128}), {"Content-Type": "application/json"})
        resp = h.getresponse()
        assert resp.status == 200 and resp.readline().startswith(b"data: ")  # the stream has started
        proc.send_signal(signal.SIGTERM)
        rest = resp.read().decode()
        assert rest.rstrip().endswith("data: [DONE]") and rest.count('"finish_reason": "stop"') + rest.count(
            '"finish_reason": "length"') == 4
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert ("engine processes ready" in err) == bool(extra)
