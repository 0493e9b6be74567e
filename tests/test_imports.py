"""The package's import structure: training and tasks stand apart from the engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "parathinker"


def _modules(package: str) -> list[str]:
    """Every module of a package of ``src/parathinker``, subpackages included."""
    root = SRC.parent
    files = sorted(SRC.joinpath(*package.split(".")[1:]).rglob("*.py"))
    names = [".".join(f.relative_to(root).with_suffix("").parts) for f in files if f.stem != "__main__"]
    return [n.removesuffix(".__init__") for n in names]


@pytest.mark.parametrize("package", ["parathinker.train", "parathinker.tasks"])
def test_train_and_tasks_do_not_load_the_engine(package):
    """Every module of train/ and tasks/ imports without loading ``parathinker.engine`` (a fresh interpreter)."""
    mods = _modules(package)
    assert len(mods) > 3
    code = (
        "import importlib, json, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(k for k in sys.modules if k.startswith('parathinker.engine'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
