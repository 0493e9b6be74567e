"""Model configuration read from a Hugging Face ``config.json`` (Qwen2 and Llama families)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

SUPPORTED_MODEL_TYPES = ("qwen2", "llama")


def read_config_json(model_dir: str | Path) -> dict[str, Any]:
    """A checkpoint's config.json as a dict; a one-line CheckpointError when it cannot be had."""
    model_dir = Path(model_dir)
    cfg_file = model_dir / "config.json"
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: no such model directory (give model=DIR, a Hugging Face checkpoint directory)")
    if not cfg_file.is_file():
        raise CheckpointError(f"{model_dir}: not a Hugging Face checkpoint (no config.json)")
    try:
        return json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{cfg_file}: unreadable ({e})") from None


# config.json keys the decoder's shape is read from without transformers (its config classes cost
# ~1 s of import); a config.json lacking one is parsed by transformers, which knows the defaults
_SHAPE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings")


class LazyHFConfig:
    """A checkpoint's transformers config, parsed on first use (saving, RoPE scaling types other than
    the default); attribute reads go to it."""

    def __init__(self, path: Path, raw: dict[str, Any]):
        self.path, self.raw = path, raw
        self._cfg: Any = None

    def get(self) -> Any:
        if self._cfg is None:
            self._cfg = _auto_config(self.path)
        return self._cfg

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.get(), name)


def _auto_config(path: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path))
    except Exception as e:  # transformers raises many types for broken configs
        raise CheckpointError(f"cannot parse {path / 'config.json'}: {e}") from None


@dataclass(frozen=True)
class ModelConfig:
    """The decoder's shape. ``hf`` keeps the transformers config (or a ``LazyHFConfig``: use
    ``hf_config()``); RoPE scaling other than the default is computed from it."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    hidden_act: str
    max_position_embeddings: int
    max_segments: int
    torch_dtype: str
    hf: Any  # transformers.PretrainedConfig

    @classmethod
    def from_hf(cls, hf: Any, max_segments: int | None = None) -> ModelConfig:
        mt = getattr(hf, "model_type", None)
        if mt not in SUPPORTED_MODEL_TYPES:
            raise CheckpointError(
                f"unsupported architecture {mt!r}: parathinker runs {', '.join(SUPPORTED_MODEL_TYPES)} "
                "(Qwen2/DeepSeek-R1-Distill-Qwen, Llama/DeepSeek-R1-Distill-Llama/SmolLM2) checkpoints"
            )
        if getattr(hf, "use_sliding_window", False):
            raise CheckpointError("sliding-window attention (use_sliding_window=true) is not supported")
        heads = hf.num_attention_heads
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // heads
        act = getattr(hf, "hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise CheckpointError(f"unsupported activation {act!r} (only silu)")
        # transformers 5 names it dtype (reading torch_dtype from its config warns: deprecated)
        dtype = getattr(hf, "dtype", None) or (hf.__dict__.get("torch_dtype") if hasattr(hf, "__dict__") else None)
        dtype = dtype or "float32"
        ms = max_segments if max_segments is not None else int(getattr(hf, "max_segments", 0) or 0)
        return cls(
            model_type=mt,
            vocab_size=hf.vocab_size,
            hidden_size=hf.hidden_size,
            intermediate_size=hf.intermediate_size,
            num_layers=hf.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(hf, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            rms_norm_eps=hf.rms_norm_eps,
            tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            qkv_bias=True if mt == "qwen2" else bool(getattr(hf, "attention_bias", False)),
            o_bias=False if mt == "qwen2" else bool(getattr(hf, "attention_bias", False)),
            mlp_bias=bool(getattr(hf, "mlp_bias", False)),
            hidden_act=act,
            max_position_embeddings=getattr(hf, "max_position_embeddings", 32768),
            max_segments=ms,
            torch_dtype=str(dtype).replace("torch.", ""),
            hf=hf,
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        """Read ``config.json`` of a checkpoint directory; errors say what is missing."""
        path = Path(path)
        raw = read_config_json(path)
        if raw.get("model_type") not in SUPPORTED_MODEL_TYPES:
            cls.from_hf(type("C", (), {"model_type": raw.get("model_type")})())  # raises the clear error
        ms = int(raw.get("max_segments", 0) or 0)
        if all(k in raw for k in _SHAPE_KEYS) and (raw["model_type"] == "qwen2" or "attention_bias" in raw):
            try:
                return dataclasses.replace(cls.from_hf(_Raw(raw), max_segments=ms), hf=LazyHFConfig(path, raw))
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"cannot parse {path / 'config.json'}: {e}") from None
        return cls.from_hf(_auto_config(path), max_segments=ms)

    def hf_config(self) -> Any:
        """The transformers config (parsed now if it was deferred)."""
        return self.hf.get() if isinstance(self.hf, LazyHFConfig) else self.hf

    def rope(self) -> tuple[str, float]:
        """(rope type, theta), from config.json itself when it has no scaling (no transformers needed)."""
        raw = self.hf.raw if isinstance(self.hf, LazyHFConfig) else None
        if raw is not None:
            params = raw.get("rope_parameters") or {}
            plain = set(params) <= {"rope_theta", "rope_type"} and params.get("rope_type", "default") == "default"
            if plain and not raw.get("rope_scaling"):
                return "default", float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
        hf = self.hf_config()
        params = getattr(hf, "rope_parameters", None) or {}
        theta = params.get("rope_theta", getattr(hf, "rope_theta", 10000.0))
        return params.get("rope_type", "default"), float(theta)

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V for one token across all layers, in the given element size (see cache)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim

    def to_hf_dict(self) -> dict[str, Any]:
        d = self.hf_config().to_dict()
        d["max_segments"] = self.max_segments
        return d


class _Raw:
    """config.json's keys as attributes (what ``from_hf`` reads), for the transformers-free path."""

    def __init__(self, raw: dict[str, Any]):
        self.__dict__.update(raw)
