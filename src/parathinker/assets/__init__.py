"""Package data: the bundled default model lives in ``assets/default/`` once it is trained."""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

DEFAULT_MODEL = Path(__file__).parent / "default"


def default_model_dir() -> Path:
    """Directory of the bundled ParaThinker checkpoint."""
    if not (DEFAULT_MODEL / "config.json").is_file():
        raise CheckpointError("this install has no bundled default model: pass --model DIR (a HF checkpoint directory)")
    return DEFAULT_MODEL
