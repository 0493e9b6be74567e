"""Builders of tiny checkpoints, tokenizers and multi-path datasets for the training tests.

The tokenizer is a byte-level BPE trained on a few dozen words (transformers 5 loads a qwen2
checkpoint's tokenizer as Qwen2Tokenizer, which needs byte-level BPE). The Qwen2 fixture ties its embeddings and
pads its vocabulary beyond the tokenizer (like real Qwen checkpoints: new tokens land in
existing rows); the Llama fixture is untied with an exact vocabulary (new tokens need a resize).
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import pytest
import torch

WORDS = ["the", "a", "is", "of", "and", "to", "what", "sum", "two", "three", "four", "five", "plus", "equals", "answer", "so", "we", "get", "check", "again", "yes", "no", "first", "then", "boxed", "user", "assistant", "system"] + [str(i) for i in range(20)]
SPECIAL = ["<unk>", "<pad>", "<s>", "</s>", "<think>", "</think>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: <think>{% endif %}"
)


@functools.lru_cache(maxsize=1)
def _bpe():
    """A tiny byte-level BPE (the kind Qwen2 and Llama 3 use), trained so common words are one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tk.train_from_iterator([" ".join(WORDS)] * 50 + [" " + w for w in WORDS] * 20, trainer)
    return tk


def build_tokenizer(out_dir: Path, *, chat_template: bool = True):
    """Save the tiny tokenizer with save_pretrained (optionally with a chat template); returns it."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=_bpe(), unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out_dir)
    return tok


def build_checkpoint(out_dir: Path, arch: str = "qwen2", *, seed: int = 0, chat_template: bool | None = None) -> Path:
    """Write a tiny random base checkpoint (hidden 64, 2 layers, 4 heads, 2 KV heads) plus tokenizer."""
    import transformers

    torch.manual_seed(seed)
    common = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=2, eos_token_id=3, pad_token_id=1,
    )
    if arch == "qwen2":
        cfg = transformers.Qwen2Config(vocab_size=448, tie_word_embeddings=True, **common)
    elif arch == "llama":
        cfg = transformers.LlamaConfig(vocab_size=_bpe().get_vocab_size(), tie_word_embeddings=False, **common)
    else:
        raise ValueError(arch)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(out_dir)
    build_tokenizer(out_dir, chat_template=(arch == "qwen2") if chat_template is None else chat_template)
    return out_dir


def toy_records(n: int = 16, *, seed: int = 0, max_paths: int = 4) -> list[dict]:
    """Arithmetic toy problems: each path restates the sum; the summary boxes it."""
    rng = random.Random(seed)
    num = ["two", "three", "four", "five"]
    vals = {"two": 2, "three": 3, "four": 4, "five": 5}
    out = []
    for k in range(n):
        a, b = rng.choice(num), rng.choice(num)
        s = vals[a] + vals[b]
        paths = []
        for _ in range(rng.randint(2, max_paths)):
            style = rng.choice([f"{a} plus {b} equals {s}", f"first {a} then {b} so {s}", f"sum of {a} and {b} is {s} check yes"])
            paths.append(style)
        rec = {"id": f"toy-{k}", "paths": paths, "summary": f"so the answer is boxed {s}", "answer": str(s)}
        if k % 2:
            rec["messages"] = [{"role": "user", "content": f"what is {a} plus {b}"}]
        else:
            rec["prompt"] = f"what is {a} plus {b}"
        out.append(rec)
    return out


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture
def qwen_base(tmp_path: Path) -> Path:
    return build_checkpoint(tmp_path / "qwen_base", "qwen2")


@pytest.fixture
def llama_base(tmp_path: Path) -> Path:
    return build_checkpoint(tmp_path / "llama_base", "llama")


@pytest.fixture(scope="session")
def prepared_qwen(tmp_path_factory) -> Path:
    """A tiny ParaThinker checkpoint (N=8, max_segments 32), built once per session."""
    from parathinker.train.prepare import prepare

    root = tmp_path_factory.mktemp("prepared")
    base = build_checkpoint(root / "base", "qwen2")
    return prepare(base, root / "para", num_paths=8).output_dir
