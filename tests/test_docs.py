"""Every shell command shown in docs/*.md runs as written, or is skipped for a stated reason (issue 14).

Commands are read from the docs' fenced blocks (```bash, ```sh or unlabelled): lines that start
with a command word, continuation lines joined, comments dropped, a quoted argument that spans
lines (curl -d '{...}') kept whole. Each command gets one verdict, in this order:

- SKIP: a pattern with the reason it cannot run here (a GPU, Ray, a hub download, a server or files
  the reader supplies, ../shared, an install, hours of CPU); every rule must match some command;
- a server (``parathinker serve`` without --help): started on a free port (the doc's port 8000 is
  rewritten to it in the doc's other commands too), it must answer /health; stopped after the doc;
- SLOW: runs only with ``-m slow`` (benchmarks: minutes each on 2 cores);
- everything else runs in the default suite, through bash, in the doc's own folder (fresh per doc;
  ``src``, ``benchmarks``, ``scripts``, ``configs`` point at this checkout, ``docs`` is a copy), in
  the doc's order, and must exit 0 without a traceback.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
COMMAND_WORDS = ("parathinker", "python", "pip", "scripts/", "curl", "serve ", "torchrun", "accelerate", "vllm",
                 "docker", "OMP_NUM_THREADS=", "CUDA_VISIBLE_DEVICES=", "DEEPSEEK_KEY=")

SKIP: dict[str, str] = {
    "pip install": "installs packages: the suite runs in an installed environment (.ci/run installs the README's way)",
    "--device cuda": "needs a CUDA GPU",
    "--replicas": "Ray Serve replicas (pip install 'parathinker[ray]', GPUs)",
    "serve run ": "Ray Serve's own CLI (pip install 'parathinker[ray]')",
    "serve deploy ": "Ray Serve's own CLI on a running Ray cluster",
    "torchrun": "multi-GPU training",
    "accelerate launch": "multi-GPU training",
    "vllm serve": "a vLLM server on a GPU",
    "docker run": "Docker and the Open WebUI image",
    "api.deepseek.com": "a hosted API and its key",
    "http://gpu1": "teacher servers the reader runs",
    "http://localhost:8000": "a teacher server the reader runs (the block under it runs one here)",
    "http://HOST": "a server the reader runs",
    "../shared": "the project's benchmark copy, outside a clone (docs/eval.md: the hub or your JSONL instead)",
    "DeepSeek-R1-Distill": "a hub model of several GB the reader downloads",
    "--model DIR": "DIR: the reader's checkpoint",
    "ckpt/": "the reader's checkpoint (made by the commands above it, from a hub model)",
    "data/multipath.jsonl": "the data made from the reader's teacher above",
    "runs/NAME": "the run of the eval above it (../shared)",
    "report runs/eval": "the run of the eval above it (a server the reader runs)",
    "preds.jsonl": "the reader's predictions file",
    "scripts/train_bundled.sh": "trains the bundled models: ~5 min on a GPU (docs/bundled-model.md)",
    "scripts/eval_bundled.sh": "the bundled models' full evaluation: hours of CPU",
    "runs/bundled_eval": "needs scripts/eval_bundled.sh's output (tests/test_bundled_report.py builds a report)",
    "runs/bundled_work": "needs scripts/train_bundled.sh's output",
}
SLOW = ("benchmarks/",)  # benchmark runs: minutes each on 2 cores


@dataclass
class Command:
    doc: str
    line: int
    text: str

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        return next((why for pat, why in SKIP.items() if pat in self.text), None)

    @property
    def is_server(self) -> bool:
        words = self.text.rstrip("& ").split()
        return words[:2] == ["parathinker", "serve"] and "--help" not in words


def shell_blocks(text: str) -> list[tuple[int, list[str]]]:
    """(line number of its first line, its lines) of each fenced block labelled bash/sh/shell or not at all."""
    blocks, lang, start, body = [], None, 0, []
    for n, line in enumerate(text.split("\n"), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, body = line[3:].strip(), n + 1, []
            else:
                if lang in ("bash", "sh", "shell", ""):
                    blocks.append((start, body))
                lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def doc_commands(path: Path) -> list[Command]:
    out = []
    for first, lines in shell_blocks(path.read_text()):
        cur, start = "", 0
        for k, line in enumerate(lines):
            if not cur:
                if not line.strip().startswith(COMMAND_WORDS):
                    continue
                cur, start = line.strip(), first + k
            else:
                cur += ("" if cur.endswith(" ") else "\n") + line.strip()
            if cur.endswith("\\"):  # a continuation line
                cur = cur[:-1].rstrip() + " "
                continue
            try:
                shlex.split(cur, comments=True)
            except ValueError:  # an open quote: the argument goes on on the next line
                continue
            out.append(Command(path.name, start, _strip_comment(cur)))
            cur = ""
    return out


def _strip_comment(cmd: str) -> str:
    """The command without a trailing ``# comment`` (outside quotes)."""
    quote, out = None, []
    for i, ch in enumerate(cmd):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or cmd[i - 1].isspace()):
            break
        out.append(ch)
    return "".join(out).strip()


COMMANDS = [c for p in sorted((ROOT / "docs").glob("*.md")) for c in doc_commands(p)]


def test_every_doc_command_has_a_verdict_and_every_skip_rule_is_used() -> None:
    assert len(COMMANDS) >= 40, [c.id for c in COMMANDS]
    used = {pat for c in COMMANDS for pat in SKIP if pat in c.text}
    assert used == set(SKIP), f"stale SKIP rules: {set(SKIP) - used}"
    runnable = [c for c in COMMANDS if c.skip_reason is None]
    assert len(runnable) >= 12 and any(c.is_server for c in runnable)


class DocRun:
    """One doc's folder, port and servers (commands of a doc run in its order, in one folder)."""

    def __init__(self, doc: str, base: Path):
        self.dir = base / doc.removesuffix(".md")
        self.dir.mkdir()
        for name in ("src", "benchmarks", "scripts", "configs"):
            (self.dir / name).symlink_to(ROOT / name)
        shutil.copytree(ROOT / "docs", self.dir / "docs")
        self.port = free_port()
        self.servers: list[subprocess.Popen] = []
        bindir = str(Path(sys.executable).parent)
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}

    def rewrite(self, cmd: str) -> str:
        cmd = cmd.replace("--port 8000", f"--port {self.port}").replace(":8000/", f":{self.port}/")
        if cmd.split()[:2] == ["parathinker", "serve"] and "--port" not in cmd:
            cmd = cmd.rstrip("& ") + f" --port {self.port}"
        return cmd.rstrip("& ")

    def serve(self, cmd: str) -> None:
        proc = subprocess.Popen(["bash", "-c", f"exec {cmd}"], cwd=self.dir, env=self.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.servers.append(proc)
        wait_healthy(proc, self.port, cmd)

    def run(self, cmd: str) -> None:
        r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=self.dir, env=self.env, capture_output=True,
                           text=True, timeout=900, start_new_session=True)
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-1000:]}\n{r.stderr[-2000:]}"
        assert "Traceback" not in r.stderr, r.stderr[-2000:]
        if cmd.startswith("curl"):  # curl exits 0 on an HTTP error too
            assert r.stdout.strip() and '"error"' not in r.stdout, r.stdout[-2000:]

    def close(self) -> None:
        for p in self.servers:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            assert "Traceback" not in (p.stderr.read() or "")


@pytest.fixture(scope="module")
def docs_run(tmp_path_factory):  # noqa: ANN201
    runs: dict[str, DocRun] = {}
    base = tmp_path_factory.mktemp("docs")

    def get(doc: str) -> DocRun:
        if doc not in runs:
            runs[doc] = DocRun(doc, base)
        return runs[doc]

    yield get
    for r in runs.values():
        r.close()


def _param(c: Command):  # noqa: ANN202
    if c.skip_reason is not None:
        return pytest.param(c, id=c.id, marks=pytest.mark.skip(reason=c.skip_reason))
    return pytest.param(c, id=c.id, marks=[pytest.mark.slow] if any(s in c.text for s in SLOW) else [])


@pytest.mark.parametrize("cmd", [_param(c) for c in COMMANDS])
def test_doc_command_runs(cmd: Command, docs_run) -> None:  # noqa: ANN001
    run = docs_run(cmd.doc)
    text = run.rewrite(cmd.text)
    if cmd.is_server:
        run.serve(text)
    else:
        run.run(text)
    if "--update-doc docs/" in text:  # the numbers a doc shows are the ones its command prints
        doc = text.split("--update-doc ")[1].split()[0]
        assert (run.dir / doc).read_text() == (ROOT / doc).read_text(), f"{cmd.text} changed {doc}"
