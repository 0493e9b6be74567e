"""Incremental detokenization: the pieces add up to the full decode, and never split a character."""

from __future__ import annotations

import random

import pytest

from parathinker.engine.detok import IncrementalDetokenizer
from parathinker.engine.outputs import join_summary

TEXTS = [
    "Café crème, naïve façade — 中文字符 and emoji 🙂🚀 mixed with \\boxed{42}.",
    "   leading spaces, tabs\tand\nnewlines; ünïcödé 数学 🧮 = 3.14",
]


@pytest.fixture(scope="module")
def byte_bpe():  # noqa: ANN201
    """A byte-level BPE (the GPT-2/Qwen kind) trained here, so multi-byte characters span tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the answer is boxed and mixed with words"] * 20, trainer)
    return tok


@pytest.mark.parametrize("chunks", ["one", "random"])
def test_pieces_add_up_and_never_split_a_character(byte_bpe, chunks: str) -> None:  # noqa: ANN001
    rng = random.Random(0)
    for text in TEXTS:
        ids = byte_bpe.encode(text).ids
        assert any(len(byte_bpe.decode([i])) == 1 and byte_bpe.decode([i]) == "\ufffd" for i in ids)  # split chars
        d = IncrementalDetokenizer(byte_bpe.decode)
        pieces, k = [], 0
        while k < len(ids):
            n = 1 if chunks == "one" else rng.randrange(1, 5)
            pieces.append(d.push(ids[k : k + n]))
            k += n
        assert all("\ufffd" not in p for p in pieces)
        pieces.append(d.finish(byte_bpe.decode(ids)))
        assert "".join(pieces) == byte_bpe.decode(ids) == text
        assert pieces[-1] == ""  # nothing was held back at the end


def test_word_level_pieces_carry_their_spaces(tmp_path) -> None:  # noqa: ANN001
    from helpers import make_tokenizer

    tok = make_tokenizer(tmp_path)
    ids = tok.encode("so we try path from 1 to 2 then back", add_special_tokens=False)
    decode = lambda x: tok.decode(list(x), skip_special_tokens=False)  # noqa: E731
    d = IncrementalDetokenizer(decode)
    pieces = [d.push([i]) for i in ids]
    assert pieces[1] == " we" and "".join(pieces) == decode(ids)


@pytest.mark.parametrize("body", ["the answer", " the answer", ""])
def test_summary_prefix_leads_the_first_piece(tmp_path, body: str) -> None:  # noqa: ANN001
    from helpers import make_tokenizer

    tok = make_tokenizer(tmp_path)
    decode = lambda x: tok.decode(list(x), skip_special_tokens=False)  # noqa: E731
    ids = tok.encode(body, add_special_tokens=False)
    d = IncrementalDetokenizer(decode, lead="The final answer is")
    pieces = [d.push([i]) for i in ids]
    final = join_summary("The final answer is", decode(ids))
    pieces.append(d.finish(final))
    assert "".join(pieces) == final and final.startswith("The final answer is")
