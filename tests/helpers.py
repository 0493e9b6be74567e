"""Builders for tiny local checkpoints (random weights, real HF format): no hub, no network."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from parathinker.tokens import control_token_strings

WORDS = [
    "the", "a", "answer", "is", "so", "we", "try", "path", "from", "to", "node", "then", "back", "dead", "end",
    "found", "goal", "start", "edge", "check", "yes", "no", "and", "or", "question", "what", "1", "2", "3", "4",
    "5", "6", "7", "8", "9", "0", "+", "-", "=", "\\boxed{", "}", "{", ".", ",", "?", "!",
]


def make_tokenizer(out: Path, num_paths: int = 8, control: bool = True):
    """A word-level fast tokenizer (saved to ``out``) with EOS/pad and, optionally, control tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<eos>", "</think>"]
    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    if control:
        fast.add_special_tokens({"additional_special_tokens": control_token_strings(num_paths)})
    fast.save_pretrained(str(out))
    # transformers 5 would otherwise pick the tokenizer class from config.json's model_type
    cfg_file = out / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_file.write_text(json.dumps(cfg, indent=2))
    return fast


def make_checkpoint(
    out: Path,
    arch: str = "qwen2",
    *,
    vocab_size: int = 96,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    max_segments: int = 32,
    seg_scale: float = 0.0,
    tie: bool = False,
    seed: int = 0,
    tokenizer: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Save a random tiny Qwen2/Llama with transformers itself, then add thought embeddings.

    ``seg_scale`` > 0 fills the seg tables with N(0, seg_scale); 0 leaves them zero.
    """
    from safetensors.torch import load_file, save_file
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    if tokenizer:
        tok = make_tokenizer(out)
        vocab_size = max(vocab_size, len(tok))
    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
        tie_word_embeddings=tie, rms_norm_eps=1e-6,
    )
    if arch == "qwen2":
        cfg = Qwen2Config(**common, rope_theta=10000.0)
        model = Qwen2ForCausalLM(cfg)
    elif arch == "llama":
        cfg = LlamaConfig(**common, rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                      "original_max_position_embeddings": 256})
        model = LlamaForCausalLM(cfg)
    else:
        raise ValueError(arch)
    with torch.no_grad():  # HF inits biases to zero; make them non-trivial so bias bugs show
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    model.to(dtype).save_pretrained(str(out))
    if max_segments:
        head_dim = hidden // heads
        g = torch.Generator().manual_seed(seed + 1)
        f = out / "model.safetensors"
        state = load_file(str(f))
        for n in range(layers):
            t = torch.randn(max_segments, head_dim, generator=g) * seg_scale
            state[f"model.layers.{n}.self_attn.seg_embeddings.weight"] = t.to(dtype)
        save_file(state, str(f), metadata={"format": "pt"})
        c = json.loads((out / "config.json").read_text())
        c["max_segments"] = max_segments
        (out / "config.json").write_text(json.dumps(c, indent=2))
    return out


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (servers in tests bind only there)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc, port: int, what: str, timeout: float = 180) -> None:  # noqa: ANN001
    """Wait until the server ``proc`` started answers ``/health`` on ``port`` with 200; fail with its
    stderr if it exits first, or after ``timeout`` seconds."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            err = err.decode(errors="replace") if isinstance(err, bytes) else err
            raise AssertionError(f"{what} exited with {proc.returncode}:\n{(err or '')[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{what}: no /health answer in {timeout:.0f} s"
        time.sleep(0.3)
