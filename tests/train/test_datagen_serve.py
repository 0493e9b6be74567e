"""End to end on the project's own pieces: `parathinker serve` (the bundled model, a real HTTP port) as the
teacher of `data generate` on pathfind problems, then `data check`, `train --max-steps`, `generate`."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_port, wait_healthy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("parathinker.serve.server") is None,
                       reason="parathinker serve is not on this branch"),
]

BUNDLED = Path(__file__).resolve().parents[2] / "src" / "parathinker" / "assets" / "default"
TEACHER = BUNDLED.parent / "sequential"


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "parathinker", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_serve_as_teacher_then_check_train_generate(tmp_path):
    from parathinker.eval.benchmarks import pathfind_default

    recs = [p.record for p in pathfind_default(1000)[-12:]]
    problems = tmp_path / "test.jsonl"
    problems.write_text("".join(json.dumps(r) + "\n" for r in recs))
    port = free_port()
    # the teacher: the bundled sequential model (one trace ending in \\boxed{route}, then EOS; 45% right per trace)
    server = subprocess.Popen([sys.executable, "-m", "parathinker", "serve", "--model", str(TEACHER), "--port", str(port),
                               "--served-model-name", "pathfind-teacher", "--threads", "1", "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_healthy(server, port, "parathinker serve (the teacher)")
        out = tmp_path / "gen.jsonl"
        gen = _cli("data", "generate", "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "pathfind-teacher",
                   "--problems", str(problems), "--out", str(out), "--paths", "4", "--temperature", "0.8",
                   "--instruction", "", "--extra-body", '{"mode": "sequential"}', "--concurrency", "4",
                   "--tokenizer", str(BUNDLED))
        assert gen.returncode == 0, gen.stderr[-3000:]
    finally:
        server.terminate()
        server.wait(30)
    man = json.loads((tmp_path / "gen.manifest.json").read_text())
    c = man["counts"]
    print(json.dumps(c, indent=1))
    assert c["problems_in"] == 12 and c["dropped"].get("request failed", 0) == 0
    assert c["kept"] >= 8 and c["correct_path_rate"] >= 0.3  # 45% per trace: most problems get a right one in 4
    check = _cli("data", "check", str(out), "--model", str(BUNDLED))
    assert check.returncode == 0, check.stdout + check.stderr
    run = tmp_path / "run"
    train = _cli("train", "--model", str(BUNDLED), "--data", str(out), "--output", str(run), "--max-steps", "2",
                 "--epochs", "0", "--global-batch-size", "4", "--per-device-batch-size", "4", "--save-steps", "100",
                 "--no-gradient-checkpointing", "--lr", "1e-5")
    assert train.returncode == 0, train.stderr[-3000:]
    g = _cli("generate", "--model", str(run), "--paths", "4", "--json", recs[0]["prompt"])
    assert g.returncode == 0, g.stderr[-3000:]
    [o] = json.loads(g.stdout)
    assert len(o["paths"]) == 4 and o["summary"]["text"]
