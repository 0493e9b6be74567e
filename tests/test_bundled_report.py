"""scripts/bundled_report.py on small real runs of the bundled models: the README's table is generated.

Runs `parathinker eval` (the real engine, the shipped checkpoints) on 6 held-out pathfind problems
into the folder layout of scripts/eval_bundled.sh, then checks the report's rows, the paired
differences, the tunnel curve and the replacement between the markers of a document.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from parathinker.assets import DEFAULT_MODEL, SEQUENTIAL_MODEL

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--benchmark", "pathfind", "--limit", "6", "--samples", "1", "--batch-size", "6", "--temperature", "1.0",
          "--top-p", "1.0", "--max-path-tokens", "128", "--summary-max-tokens", "48", "--no-progress"]


def _eval(out: Path, *args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "parathinker", "eval", *COMMON, "--out", str(out), *args],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.fixture(scope="module")
def report():  # noqa: ANN201 - the script module
    spec = importlib.util.spec_from_file_location("bundled_report", ROOT / "scripts" / "bundled_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bundled_eval")
    _eval(root / "pt", "--model", str(DEFAULT_MODEL), "--method", "parathinker", "--paths", "1,8")
    _eval(root / "pt_last", "--model", str(DEFAULT_MODEL), "--method", "parathinker", "--paths", "8",
          "--termination", "last")
    _eval(root / "seq", "--model", str(SEQUENTIAL_MODEL), "--method", "sequential,majority", "--paths", "8")
    _eval(root / "tunnel", "--model", str(SEQUENTIAL_MODEL), "--tunnel-vision", "--tunnel-prefixes", "4")
    return root


def test_report_tables_and_doc_markers(report, runs: Path, tmp_path: Path) -> None:  # noqa: ANN001
    text, data = report.build(runs)
    assert "| **ParaThinker@P** |" in text and "| sequential model, majority@P |" in text
    assert "- ParaThinker@8 − the sequential model (budget B):" in text
    assert "| last | 8 |" in text and "Tunnel vision" in text
    pt8 = data["series"]["**ParaThinker@P**"][3]
    assert pt8 is not None and pt8.problems == 6 and 0 <= pt8.pass1 <= 100
    assert [t["prefix_tokens"] for t in data["tunnel"]][:1] == [0]
    doc = tmp_path / "doc.md"
    doc.write_text(f"head\n{report.BEGIN}\nold\n{report.END}\ntail\n")
    report.main([str(runs), "--doc", str(doc), "--img", str(tmp_path / "img" / "plot.png")])
    body = doc.read_text()
    assert body.startswith("head\n") and body.endswith("tail\n") and "old" not in body
    assert text in body and "](img/plot.png)" in body
    assert (tmp_path / "img" / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="markers"):
        (tmp_path / "plain.md").write_text("no markers\n")
        report.main([str(runs), "--doc", str(tmp_path / "plain.md"), "--img", str(tmp_path / "img" / "p.png")])
