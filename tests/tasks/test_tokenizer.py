"""The task tokenizer: AutoTokenizer loads it, control tokens are there, texts round-trip."""

from __future__ import annotations

import random

import pytest

from parathinker.tasks.pathfind.data import DataConfig, make_example
from parathinker.tasks.pathfind.problem import generate
from parathinker.tasks.pathfind.tokenizer import prompting_defaults, save_tokenizer
from parathinker.tokens import ControlTokens, control_token_strings


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from transformers import AutoTokenizer

    d = save_tokenizer(tmp_path_factory.mktemp("tok"))
    assert (d / "tokenizer.json").exists() and (d / "tokenizer_config.json").exists()
    return AutoTokenizer.from_pretrained(str(d))


def test_control_and_special_tokens(tok):
    ct = ControlTokens.from_tokenizer(tok)
    assert ct.max_paths == 8
    assert tok.eos_token == "<eos>" and tok.pad_token == "<pad>" and tok.eos_token_id in ct.eos_ids
    vocab = tok.get_vocab()
    for s in control_token_strings(8):
        assert s in vocab
        assert tok.convert_ids_to_tokens(tok.encode(s, add_special_tokens=False)) == [s]
    assert len(tok) < 200


def _packed_texts(n=50):
    rng = random.Random(0)
    for i in range(n):
        ex = make_example(str(i), generate(rng), rng, DataConfig())
        parts = [ex["prompt"]]
        for k, body in enumerate(ex["paths"], 1):
            parts.append(f"<think{k}> {body} </think{k}>")
        parts.append(f"<summary> {ex['summary']} </summary> <eos>")
        yield ex, " ".join(parts)


def test_round_trip_and_no_unknown_words(tok):
    for ex, text in _packed_texts():
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text
        assert tok.encode(tok.decode(ids), add_special_tokens=False) == ids
        # pieces tokenized alone concatenate to the whole (what a trainer packing pieces relies on)
        pieces = [ex["prompt"], *ex["paths"], ex["summary"]]
        n_pieces = sum(len(tok.encode(p, add_special_tokens=False)) for p in pieces)
        assert n_pieces + 2 * len(ex["paths"]) + 3 == len(ids)
        for body in ex["paths"]:
            assert tok.decode(tok.encode(body, add_special_tokens=False)) == body


def test_chat_template_is_the_prompt_verbatim(tok):
    prompt = "graph : 12 > 47 , 47 > 90 ; find path 12 to 90"
    out = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    assert out == prompt


def test_engine_prompt_is_the_problem_text(tok, tmp_path):
    from parathinker.prompting import PromptStyle, encode_prompt, format_prompt

    style = PromptStyle(**prompting_defaults())
    prompt = "graph : 12 > 47 , 47 > 90 ; find path 12 to 90"
    assert format_prompt(tok, prompt, style) == prompt
    assert encode_prompt(tok, prompt, style) == tok.encode(prompt, add_special_tokens=False)
    for word in style.summary_prefix.split():
        assert word in tok.get_vocab()
