"""`parathinker prepare`: turn a base Qwen2/Llama checkpoint into a ParaThinker checkpoint.

What it adds (everything else is the base checkpoint, written back by transformers):
- control tokens ``<think1>..<thinkN>``, ``</think1>..</thinkN>``, ``<summary>``, ``</summary>``
  as special tokens (only those missing, so a second run adds nothing);
- embedding rows for them: the input (and, when untied, output) rows of ``<think i>`` start as
  the base's ``<think>`` row, those of ``</think i>`` as ``</think>`` (R1-distill models have both
  and already know what they mean); without them, and for the summary tokens, the mean of the
  base's real-token rows. Rows are only written for tokens this run added; Qwen checkpoints pad
  the vocabulary, so new ids may land in existing (untrained) rows and need no resize.
- thought embeddings ``model.layers.{n}.self_attn.seg_embeddings.weight`` [max_segments, head_dim]
  and the config key ``max_segments``. Default init is zeros: the prepared model is then exactly
  the base model on every sequence (testable), and zeros still train, because the table is an
  additive bias on keys and values whose gradient does not depend on its value. Tables already in
  the input (re-running on a prepared checkpoint) are kept as they are.

The result is written to a temporary sibling directory and renamed into place: a failure leaves
no half-written output.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError
from ..model.config import SUPPORTED_MODEL_TYPES, read_config_json
from ..model.loader import weight_files
from ..tokens import control_token_strings

log = logging.getLogger(__name__)

SEG_KEY = "model.layers.{}.self_attn.seg_embeddings.weight"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".safetensors.index.json", ".bin.index.json")


@dataclass
class PrepareResult:
    """What one run did (printed by the CLI)."""

    output_dir: Path
    added_tokens: list[str]
    vocab_rows: tuple[int, int]  # embedding rows before, after
    max_segments: int
    seg_source: str  # "kept" | "zeros" | "normal(std)"


def read_config(model_dir: Path) -> dict:
    """The checkpoint's config.json as a dict, with a one-line CheckpointError when unusable."""
    cfg = read_config_json(model_dir)
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"{model_dir}: model_type {model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    return cfg


def read_seg_tables(model_dir: Path, num_layers: int) -> dict[str, torch.Tensor]:
    """Existing thought-embedding tensors of a checkpoint (empty when it has none)."""
    from safetensors import safe_open

    wanted = {SEG_KEY.format(n) for n in range(num_layers)}
    found: dict[str, torch.Tensor] = {}
    for f in weight_files(model_dir):
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():  # noqa: SIM118 - safe_open is not a dict
                if k in wanted:
                    found[k] = sf.get_tensor(k)
    return found


def _writable_tmp(output_dir: Path) -> Path:
    parent = output_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=parent))
    except OSError as e:
        raise CheckpointError(f"cannot write the output to {output_dir}: {e.strerror or e}") from None


def _replace_dir(tmp: Path, output_dir: Path) -> None:
    """Move ``tmp`` to ``output_dir``, replacing an existing directory only once the new one is complete."""
    old = None
    if output_dir.exists():
        old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
        output_dir.rename(old)
    tmp.rename(output_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _init_new_rows(weight: torch.Tensor, new_ids: dict[str, int], vocab: dict[str, int], n_real: int) -> None:
    """Write starting rows for newly added tokens (see the module docstring for the rule)."""
    mean = weight[:n_real].float().mean(0)
    with torch.no_grad():
        for tok, idx in new_ids.items():
            if tok.startswith("</think") and "</think>" in vocab:
                src = weight[vocab["</think>"]].float()
            elif tok.startswith("<think") and "<think>" in vocab:
                src = weight[vocab["<think>"]].float()
            else:
                src = mean
            weight[idx] = src.to(weight.dtype)


def _add_seg_tensors(out_dir: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Put the thought-embedding tensors into the written checkpoint (single file or shard index)."""
    from safetensors.torch import load_file, save_file

    index = out_dir / "model.safetensors.index.json"
    if index.is_file():
        name = "model-seg-embeddings.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_dir / name), metadata={"format": "pt"})
        idx = json.loads(index.read_text())
        idx["weight_map"].update({k: name for k in tensors})
        index.write_text(json.dumps(idx, indent=2, sort_keys=True) + "\n")
        return
    single = out_dir / "model.safetensors"
    state = load_file(str(single))
    state.update({k: v.contiguous() for k, v in tensors.items()})
    save_file(state, str(single), metadata={"format": "pt"})


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load reports and progress bars (a CLI prints its own summary)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def prepare(
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    num_paths: int = 8,
    max_segments: int = 32,
    seg_init_std: float = 0.0,
    seed: int = 0,
) -> PrepareResult:
    """Write a ParaThinker checkpoint for ``model_dir`` to ``output_dir`` (see the module docstring)."""

    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if num_paths < 1:
        raise ConfigError(f"--num-paths must be >= 1, got {num_paths}")
    if max_segments < num_paths + 1:
        raise ConfigError(
            f"--max-segments ({max_segments}) must exceed --num-paths ({num_paths}): segment ids are 0..num_paths"
        )
    if seg_init_std < 0:
        raise ConfigError(f"--seg-init-std must be >= 0, got {seg_init_std}")
    cfg = read_config(model_dir)

    with quiet_transformers():
        return _prepare(model_dir, output_dir, cfg, num_paths, max_segments, seg_init_std, seed)


def _prepare(model_dir, output_dir, cfg, num_paths, max_segments, seg_init_std, seed) -> PrepareResult:
    import transformers

    existing_segments = cfg.get("max_segments")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:  # transformers raises many types here; the user needs one line
        raise CheckpointError(f"{model_dir}: cannot load the tokenizer ({type(e).__name__}: {e})") from None
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="auto")
    except Exception as e:
        raise CheckpointError(f"{model_dir}: cannot load the model ({type(e).__name__}: {e})") from None
    tmp = _writable_tmp(output_dir)
    try:
        n_real = len(tokenizer)
        vocab = tokenizer.get_vocab()
        missing = [t for t in control_token_strings(num_paths) if t not in vocab]
        if missing:
            tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
        vocab = tokenizer.get_vocab()
        new_ids = {t: vocab[t] for t in missing}

        rows_before = model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows_before:
            # The library grows (and re-ties) both matrices; rows are set below, so skip its sampling.
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        emb_in = model.get_input_embeddings().weight
        _init_new_rows(emb_in.data, new_ids, vocab, n_real)
        emb_out = model.get_output_embeddings()
        if emb_out is not None and emb_out.weight.data_ptr() != emb_in.data_ptr():
            _init_new_rows(emb_out.weight.data, new_ids, vocab, n_real)

        hf = model.config
        n_layers = hf.num_hidden_layers
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        seg = read_seg_tables(model_dir, n_layers) if existing_segments else {}
        if len(seg) == n_layers:
            rows = next(iter(seg.values())).shape[0]
            if rows < num_paths + 1:
                raise CheckpointError(
                    f"{model_dir}: has {rows} thought-embedding rows, too few for {num_paths} paths; "
                    "prepare from the base checkpoint instead"
                )
            max_segments, source = rows, "kept"
        else:
            gen = torch.Generator().manual_seed(seed)
            dtype = emb_in.dtype
            seg = {}
            for n in range(n_layers):
                t = torch.zeros(max_segments, head_dim)
                if seg_init_std > 0:
                    t.normal_(0.0, seg_init_std, generator=gen)
                seg[SEG_KEY.format(n)] = t.to(dtype)
            source = f"normal({seg_init_std})" if seg_init_std > 0 else "zeros"

        hf.max_segments = max_segments
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        _add_seg_tensors(tmp, seg)
        # Keep the base's other small files (README, LICENSE, generation config if not rewritten).
        for f in model_dir.iterdir():
            if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and not (tmp / f.name).exists():
                shutil.copy2(f, tmp / f.name)
        _replace_dir(tmp, output_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write the output to {output_dir}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    rows_after = model.get_input_embeddings().weight.shape[0]
    log.info("prepared %s: added %d tokens, rows %d -> %d", output_dir, len(missing), rows_before, rows_after)
    return PrepareResult(output_dir, missing, (rows_before, rows_after), max_segments, source)
