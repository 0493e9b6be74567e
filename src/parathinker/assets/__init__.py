"""Package data: the bundled models (trained by scripts/train_bundled.sh, see docs/bundled-model.md).

``default/``: the ParaThinker checkpoint for the pathfind task, loaded by ``LLM(None)`` and
``parathinker generate`` without ``--model``. ``sequential/``: its sequential control (same data and
recipe, one path + answer per example), the baseline of the evaluation and the regression tests.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

DEFAULT_MODEL = Path(__file__).parent / "default"
SEQUENTIAL_MODEL = Path(__file__).parent / "sequential"


def default_model_dir() -> Path:
    """Directory of the bundled ParaThinker checkpoint."""
    if not (DEFAULT_MODEL / "config.json").is_file():
        raise CheckpointError("this install has no bundled default model: give model=DIR (a Hugging Face checkpoint directory)")
    return DEFAULT_MODEL
