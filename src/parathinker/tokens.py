"""ParaThinker control tokens, read from a tokenizer.

`<think1>`..`<thinkN>` open path i, `</think1>`..`</thinkN>` close it, `<summary>` and
`</summary>` wrap the summary. The ids come from the tokenizer's vocabulary, never from
hard-coded numbers, so any checkpoint prepared by `parathinker prepare` (or the released
ParaThinker-1.5B) works.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError, TokenizerError

SUMMARY_OPEN = "<summary>"
SUMMARY_CLOSE = "</summary>"


def think_open(i: int) -> str:
    """Text of the token that opens path ``i`` (1-based)."""
    return f"<think{i}>"


def think_close(i: int) -> str:
    """Text of the token that closes path ``i`` (1-based)."""
    return f"</think{i}>"


def control_token_strings(num_paths: int) -> list[str]:
    """Control tokens in the released order: <think1>, </think1>, ..., <summary>, </summary>."""
    out: list[str] = []
    for i in range(1, num_paths + 1):
        out += [think_open(i), think_close(i)]
    return out + [SUMMARY_OPEN, SUMMARY_CLOSE]


_THINK_RE = re.compile(r"^<think(\d+)>$")


@dataclass(frozen=True)
class ControlTokens:
    """Token ids of the control tokens plus the tokens that may end a sequence.

    ``think_open[i-1]`` / ``think_close[i-1]`` are the ids of ``<think i>`` / ``</think i>``.
    ``eos_ids`` are the model's end-of-sequence ids; ``plain_think_close`` is the id of a
    plain ``</think>`` when the vocabulary has one (R1-distill models do); both end a path.
    """

    think_open: tuple[int, ...]
    think_close: tuple[int, ...]
    summary_open: int
    summary_close: int
    eos_ids: tuple[int, ...] = ()
    plain_think_close: int | None = None
    extra_banned: tuple[int, ...] = field(default=())  # e.g. <vllm_pad>: never sampled

    @property
    def max_paths(self) -> int:
        return len(self.think_open)

    @property
    def all_ids(self) -> tuple[int, ...]:
        return (*self.think_open, *self.think_close, self.summary_open, self.summary_close, *self.extra_banned)

    def path_end_ids(self, i: int) -> tuple[int, ...]:
        """Ids that end path ``i`` when sampled: its own close token, EOS, plain ``</think>``."""
        ids = [self.think_close[i - 1], *self.eos_ids]
        if self.plain_think_close is not None:
            ids.append(self.plain_think_close)
        return tuple(dict.fromkeys(ids))

    def banned_in_path(self, i: int) -> tuple[int, ...]:
        """Control ids that may not be sampled inside path ``i``."""
        own_close = self.think_close[i - 1]
        return tuple(t for t in self.all_ids if t != own_close)

    def banned_in_summary(self) -> tuple[int, ...]:
        return tuple(t for t in self.all_ids if t != self.summary_close)

    def summary_end_ids(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys([self.summary_close, *self.eos_ids]))

    @classmethod
    def from_vocab(
        cls, vocab: dict[str, int], eos_ids: Iterable[int] = (), *, source: str = "the tokenizer"
    ) -> ControlTokens:
        """Find the control tokens in a token->id vocabulary (added tokens included)."""
        indices = sorted(int(m.group(1)) for tok in vocab if (m := _THINK_RE.match(tok)))
        n = 0
        while n + 1 in indices and think_close(n + 1) in vocab:
            n += 1
        missing = [t for t in (SUMMARY_OPEN, SUMMARY_CLOSE) if t not in vocab]
        if n == 0 or missing:
            raise TokenizerError(
                f"{source} has no ParaThinker control tokens (<think1>..</thinkN>, <summary>, </summary>); "
                "run `parathinker prepare --model BASE --output OUT` to add them, "
                "or use mode=sequential or mode=majority, which need none"
            )
        extra = tuple(vocab[t] for t in ("<vllm_pad>",) if t in vocab)
        return cls(
            think_open=tuple(vocab[think_open(i)] for i in range(1, n + 1)),
            think_close=tuple(vocab[think_close(i)] for i in range(1, n + 1)),
            summary_open=vocab[SUMMARY_OPEN],
            summary_close=vocab[SUMMARY_CLOSE],
            eos_ids=tuple(dict.fromkeys(int(e) for e in eos_ids)),
            plain_think_close=vocab.get("</think>"),
            extra_banned=extra,
        )

    @classmethod
    def from_tokenizer(cls, tokenizer, eos_ids: Iterable[int] = ()) -> ControlTokens:
        """Read the control tokens of a transformers tokenizer (``get_vocab`` includes added tokens)."""
        eos = list(eos_ids)
        if tokenizer.eos_token_id is not None:
            eos.append(tokenizer.eos_token_id)
        name = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
        return cls.from_vocab(tokenizer.get_vocab(), eos, source=f"tokenizer {name!r}")


_GENERIC_FAST = ("PreTrainedTokenizerFast", "TokenizersBackend")


def load_tokenizer(path: str | Path) -> Any:
    """Load a checkpoint's tokenizer exactly as saved.

    transformers 5's AutoTokenizer prefers the tokenizer class of config.json's model_type
    (e.g. Qwen2Tokenizer) and rebuilds a generic ``tokenizer.json`` (word-level, say) with it;
    a tokenizer saved as a generic fast tokenizer is therefore loaded as one.
    """
    path = Path(path)
    try:
        cfg_file = path / "tokenizer_config.json"
        cls = json.loads(cfg_file.read_text()).get("tokenizer_class") if cfg_file.is_file() else None
        if cls in _GENERIC_FAST and (path / "tokenizer.json").is_file():
            # not AutoTokenizer here: importing it imports every model class (~0.3 s of a CLI start)
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast.from_pretrained(str(path))
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # transformers raises OSError/ValueError/... for missing or broken files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load the tokenizer of {path}: {msg}") from None
