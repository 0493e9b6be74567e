"""Word-level tokenizer of the path-finding task (a real ``tokenizers`` / transformers tokenizer).

Every text of the task is tokens joined by single spaces, so the tokenizer splits on
whitespace, maps each word to one id, and decodes by joining with single spaces: decode
then encode (and encode then decode) round-trips exactly. The vocabulary is fixed (not
learned), so ids never change between runs. Special tokens: ``<pad>``, ``<unk>``, ``<bos>``
(never added automatically), ``<eos>``, and the ParaThinker control tokens for 8 paths.
The chat template renders the user message verbatim: the problem text is the whole prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...prompting import RELEASED_SUMMARY_PREFIX
from ...tokens import control_token_strings
from .problem import NODE_NAMES
from .teacher import BOX_CLOSE, BOX_OPEN, DEAD, FOUND, GUESS, MAX_TRIES, try_token

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
NUM_CONTROL_PATHS = 8
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"

_PROMPT_WORDS = ["graph", ":", ">", ",", ";", "find", "path", "to"]
_TRACE_WORDS = [FOUND, DEAD, GUESS, BOX_OPEN, BOX_CLOSE, "none"]


def special_tokens() -> list[str]:
    return [PAD, UNK, BOS, EOS, *control_token_strings(NUM_CONTROL_PATHS)]


def vocabulary() -> list[str]:
    """All tokens, in id order: special tokens first, then the task's words."""
    words = [
        *_PROMPT_WORDS,
        *NODE_NAMES,
        *(try_token(k) for k in range(1, MAX_TRIES + 1)),
        *_TRACE_WORDS,
        *RELEASED_SUMMARY_PREFIX.split(),
    ]
    out = special_tokens()
    for w in words:
        if w not in out:
            out.append(w)
    return out


def build_tokenizer():
    """The task's tokenizer as a ``transformers.PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # no decoder: tokenizers then joins tokens with single spaces, which is exactly our text
    tok.add_special_tokens(special_tokens())
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        additional_special_tokens=control_token_strings(NUM_CONTROL_PATHS),
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def prompting_defaults() -> dict:
    """``parathinker.json`` for a checkpoint of this task (read by ``parathinker.prompting``).

    No instruction (its words are not in the vocabulary), the verbatim chat template, the
    released summary prefix (the teacher summaries start with it), sampling at temperature 1
    (the traces' choices are uniform; a lower temperature makes paths agree and fail together)
    and budgets that fit the traces.
    """
    return {
        "instruction": None,
        "chat_template": True,
        "summary_prefix": RELEASED_SUMMARY_PREFIX,
        "parallel": {"max_path_tokens": 128, "summary_max_tokens": 48},
        "sampling": {"temperature": 1.0, "top_p": 1.0},
    }


def save_tokenizer(out_dir: str | Path) -> Path:
    """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json and parathinker.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    tok.save_pretrained(str(out))
    stm = out / "special_tokens_map.json"
    if not stm.exists():  # transformers 5 folds it into tokenizer_config.json; older readers want it
        stm.write_text(
            json.dumps(
                {
                    "pad_token": PAD,
                    "unk_token": UNK,
                    "bos_token": BOS,
                    "eos_token": EOS,
                    "additional_special_tokens": control_token_strings(NUM_CONTROL_PATHS),
                },
                indent=2,
            )
            + "\n"
        )
    (out / "parathinker.json").write_text(json.dumps(prompting_defaults(), indent=2) + "\n")
    return out
