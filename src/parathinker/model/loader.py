"""Load and save checkpoints in Hugging Face format (single or sharded safetensors)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import CheckpointError
from .config import ModelConfig
from .model import ParaThinkerForCausalLM, rotary_frequencies

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype, cfg: ModelConfig, device: torch.device) -> torch.dtype:
    """``auto``: the checkpoint's dtype on an accelerator, float32 on the CPU (bf16 matmuls are slow there)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else _DTYPES.get(cfg.torch_dtype, torch.bfloat16)
    if dtype not in _DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return _DTYPES[dtype]


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint (single file, or the shards its index lists)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"cannot read {index}: {e}") from None
        files = [path / n for n in names]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"shards listed in {index.name} are missing: {', '.join(missing)}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors weights in {path} (PyTorch .bin checkpoints: convert them first)")
    return files


def load_model(
    path: str | Path, dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu"
) -> ParaThinkerForCausalLM:
    """Build the model from ``path`` (config.json + safetensors) on ``device``.

    Thought embeddings are taken from ``model.layers.{n}.self_attn.seg_embeddings.weight`` when
    present (``max_segments`` is inferred from their shape if config.json lacks it); a checkpoint
    without them runs as the plain base model.
    """
    path = Path(path)
    device = torch.device(device)
    cfg = ModelConfig.from_dir(path)
    files = weight_files(path)
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                for name in sf.keys():  # noqa: SIM118 - safe_open is not a dict
                    state[name] = sf.get_tensor(name)
        except Exception as e:  # safetensors raises several error types for corrupt files
            raise CheckpointError(f"cannot read weights {f}: {e}") from None

    seg_key = "model.layers.0.self_attn.seg_embeddings.weight"
    if seg_key in state and state[seg_key].shape[0] != cfg.max_segments:
        cfg = dataclasses.replace(cfg, max_segments=state[seg_key].shape[0])
    torch_dtype = resolve_dtype(dtype, cfg, device)

    with torch.device("meta"):
        model = ParaThinkerForCausalLM(cfg)
    expected = dict(model.state_dict())
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    missing = [k for k in expected if k not in state]
    seg_missing = [k for k in missing if "seg_embeddings" in k]
    missing = [k for k in missing if "seg_embeddings" not in k]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {len(missing)} weights, e.g. {missing[0]}")
    unexpected = [k for k in state if k not in expected and not k.endswith("rotary_emb.inv_freq")]
    if unexpected and not (cfg.tie_word_embeddings and unexpected == ["lm_head.weight"]):
        raise CheckpointError(f"checkpoint {path} has weights this architecture does not use, e.g. {unexpected[0]}")
    for k, t in expected.items():
        if k in state and tuple(state[k].shape) != tuple(t.shape):
            raise CheckpointError(f"weight {k} has shape {tuple(state[k].shape)}, config.json implies {tuple(t.shape)}")

    # = model.to_empty(device): but torch.empty from the shape, not empty_like of a meta tensor (whose
    # first call imports torch's symbolic-shapes machinery: ~0.5-0.9 s of every start-up)
    model = model._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device=device)).to(torch_dtype)
    with torch.no_grad():
        params = dict(model.named_parameters(remove_duplicate=False))
        for k, p in params.items():
            if k in state:
                p.copy_(state[k])
            elif k in seg_missing:
                p.zero_()
        if cfg.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        inv_freq, _ = rotary_frequencies(cfg)
        model.rotary.inv_freq = inv_freq.to(device)
    if seg_missing:
        warnings.warn(
            f"config.json of {path} sets max_segments={cfg.max_segments} but no seg_embeddings weights were found: "
            "thought embeddings are zero (the model runs as its base model)",
            stacklevel=2,
        )
    return model.eval()


def save_model(
    model: ParaThinkerForCausalLM,
    out_dir: str | Path,
    tokenizer=None,  # noqa: ANN001
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write config.json (with ``max_segments``) + model.safetensors (+ tokenizer) atomically.

    ``state_dict``: the weights to write instead of ``model.state_dict()`` (a full state dict
    gathered by DeepSpeed ZeRO-3 / FSDP, whose ``model`` holds only shards); ``model`` then only
    gives the config. The saved dtype is the weights' own.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        cfg = model.config
        source = model.state_dict() if state_dict is None else state_dict
        state = {k: v.detach().contiguous().cpu() for k, v in source.items()}
        if cfg.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        d = cfg.to_hf_dict()
        dtype = model.dtype if state_dict is None else next(
            (v.dtype for v in state.values() if v.is_floating_point()), model.dtype
        )
        d["dtype"] = str(dtype).replace("torch.", "")
        d.pop("torch_dtype", None)
        (tmp / "config.json").write_text(json.dumps(d, indent=2, sort_keys=True))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
