"""The collator against THE layout module: batches are `layout.pack` plus padding, nothing else."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import transformers

from parathinker.layout import IGNORE_INDEX, LayoutConfig, attention_bias, pack
from parathinker.tokens import ControlTokens
from parathinker.train.collate import (
    PAD_KIND,
    Collator,
    Encoded,
    MultiPathDataset,
    PackConfig,
    encode_records,
    pack_example,
    prompt_ids,
    sequential_separator,
)
from parathinker.train.data import Record
from parathinker.train.prepare import quiet_transformers

from .conftest import toy_records


@pytest.fixture(scope="module")
def tok(prepared_qwen):
    with quiet_transformers():
        return transformers.AutoTokenizer.from_pretrained(str(prepared_qwen))


@pytest.fixture(scope="module")
def ctok(tok):
    return ControlTokens.from_tokenizer(tok)


def _records(n=12):
    return [Record(r["id"], tuple(r["paths"]), r["summary"], r.get("prompt"),
                   tuple(r["messages"]) if "messages" in r else None, r["answer"]) for r in toy_records(n)]


def _enc(prompt, path_lens, summary_len, start=100):
    rng = np.random.default_rng(0)
    mk = lambda n: rng.integers(start, start + 50, n).astype(np.int32)  # noqa: E731
    return Encoded("x", mk(prompt), [mk(n) for n in path_lens], mk(summary_len))


@pytest.mark.parametrize("layout", [LayoutConfig(), LayoutConfig(flat_positions=True), LayoutConfig(thought_embeddings=False)])
def test_batch_equals_layout_pack(tok, ctok, layout):
    cfg = PackConfig(max_length=4096, flat_positions=layout.flat_positions, thought_embeddings=layout.thought_embeddings)
    recs = _records()
    enc = encode_records(recs, tok)
    ds = MultiPathDataset(enc, ctok, cfg, seed=3)
    feats = [ds[i] for i in range(6)]
    batch = Collator(pad_id=tok.pad_token_id)(feats)
    T = batch["input_ids"].shape[1]
    assert batch["attn_bias"].shape == (6, 1, T, T)
    for b, (f, e) in enumerate(zip(feats, enc)):
        n = len(f["input_ids"])
        # recover the drawn paths and indices from the sequence, then pack them independently
        ids = f["input_ids"]
        L = len(e.prompt)
        assert ids[:L] == e.prompt.tolist()
        opens = [j for j, t in enumerate(ids) if t in ctok.think_open]
        idx = [ctok.think_open.index(ids[j]) + 1 for j in opens]
        bodies = []
        for j, i in zip(opens, idx):
            end = ids.index(ctok.think_close[i - 1], j)
            bodies.append(ids[j + 1 : end])
        assert sorted(map(tuple, bodies)) == sorted(tuple(p.tolist()) for p in e.paths)  # all paths, once each
        assert idx == sorted(idx) and len(set(idx)) == len(idx) and max(idx) <= 8
        ref = pack(e.prompt.tolist(), bodies, e.summary.tolist(), ctok, think_indices=idx, config=layout)
        assert batch["input_ids"][b, :n].tolist() == ref.input_ids
        assert batch["labels"][b, :n].tolist() == ref.labels
        assert batch["positions"][b, :n].tolist() == ref.positions
        assert batch["segment_ids"][b, :n].tolist() == ref.segment_ids
        torch.testing.assert_close(batch["attn_bias"][b, 0, :n, :n], attention_bias(ref.visibility()), rtol=0, atol=0)
        # padding: no loss, hidden from real tokens, each pad row sees itself only (no NaN rows)
        assert (batch["labels"][b, n:] == IGNORE_INDEX).all() and (batch["kinds"][b, n:] == PAD_KIND).all()
        visible = batch["attn_bias"][b, 0] == 0
        assert not visible[:, n:].any() or (visible[n:, n:] == torch.eye(T - n, dtype=torch.bool)).all()
        assert not visible[:n, n:].any()
        assert visible.any(-1).all()


def test_prompt_matches_engine_formatting(tok):
    from parathinker.prompting import encode_prompt

    r = Record("a", ("p",), "s", prompt="what is two plus two")
    assert prompt_ids(tok, r) == encode_prompt(tok, "what is two plus two")
    m = Record("b", ("p",), "s", messages=({"role": "user", "content": "what is two"},))
    text = tok.decode(prompt_ids(tok, m))
    assert text.startswith("<s>user: what is two</s>") and text.rstrip().endswith("<think>")


def test_engine_prompting_takes_chat_messages(tok):
    """One formatter for train and inference: messages go through parathinker.prompting, verbatim with the template."""
    from parathinker.prompting import PromptStyle, encode_prompt, format_prompt

    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is two"}]
    text = format_prompt(tok, msgs)
    assert text == tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)  # already opens <think>
    assert text.endswith("assistant: <think>")
    assert "MUST BE" not in text  # no instruction added to messages
    ids = encode_prompt(tok, msgs)
    assert ids == tok.encode(text, add_special_tokens=False)
    assert prompt_ids(tok, Record("m", ("p",), "s", messages=tuple(msgs))) == ids
    # the checkpoint's chat_template=False concerns questions; messages keep the template (as before)
    assert encode_prompt(tok, msgs, PromptStyle(chat_template=False)) == ids
    # raw: contents joined, the tokenizer's own special tokens
    assert format_prompt(tok, msgs, raw=True) == "be brief\nwhat is two"
    assert encode_prompt(tok, msgs, raw=True) == tok.encode("be brief\nwhat is two", add_special_tokens=True)
    # a question is unchanged by the new signature
    q = "what is two plus two"
    assert format_prompt(tok, q) == tok.apply_chat_template(
        [{"role": "user", "content": f"{q}\n{PromptStyle().instruction}"}], add_generation_prompt=True, tokenize=False
    )
    assert format_prompt(tok, q, raw=True) == q


def test_relabelling_reaches_every_index(ctok):
    enc = _enc(5, [3, 4, 5], 2)
    seen = set()
    for seed in range(200):
        seq, _ = pack_example(enc, ctok, PackConfig(), random.Random(seed))
        assert seq.think_indices == sorted(seq.think_indices) and len(seq.think_indices) == 3
        seen.update(seq.think_indices)
    assert seen == set(range(1, 9))
    for seed in range(20):  # relabelling off: the paper's base case, 1..k
        seq, _ = pack_example(enc, ctok, PackConfig(relabel_prob=0.0), random.Random(seed))
        assert seq.think_indices == [1, 2, 3]
    counts = {pack_example(enc, ctok, PackConfig(min_paths=1), random.Random(s))[0].think_indices.__len__()
              for s in range(100)}
    assert counts == {1, 2, 3}


def test_dataset_draws_are_seeded_and_change_per_epoch(tok, ctok):
    enc = encode_records(_records(4), tok)
    a = MultiPathDataset(enc, ctok, PackConfig(), seed=1)
    b = MultiPathDataset(enc, ctok, PackConfig(), seed=1)
    assert [a[i] for i in range(4)] == [b[i] for i in range(4)]
    before = [a[i]["input_ids"] for i in range(4)]
    a.set_epoch(1)
    assert [a[i]["input_ids"] for i in range(4)] != before


def test_truncation_policy_counts(ctok):
    enc = _enc(10, [20, 20, 20], 5)  # full: 10 + 3*22 + 7 = 83 tokens
    seq, stats = pack_example(enc, ctok, PackConfig(max_length=83), random.Random(0))
    assert len(seq) == 83 and stats == (0, 0, 0)
    seq, stats = pack_example(enc, ctok, PackConfig(max_length=60), random.Random(0))
    assert len(seq) == 39 and stats == (1, 2, 0)  # two paths dropped, nothing cut
    seq, stats = pack_example(enc, ctok, PackConfig(max_length=30), random.Random(0))
    assert len(seq) == 30 and stats == (1, 2, 9)  # then 9 tokens cut from the last path
    s, e = seq.path_spans[0]
    assert seq.input_ids[e - 1] == ctok.think_close[seq.think_indices[0] - 1]  # still closed ...
    assert seq.labels[e - 2] == IGNORE_INDEX  # ... but no loss on the artificial end
    assert seq.labels[e - 3] == seq.input_ids[e - 2]  # the kept body still trains
    assert seq.summary_span is not None and seq.labels[seq.summary_span[1] - 2] == ctok.summary_close


def test_unfittable_examples_skipped_with_count(ctok, caplog):
    encs = [_enc(10, [5], 5), _enc(40, [5], 30)]
    encs[1].id = "too-long"
    with caplog.at_level("WARNING"):
        ds = MultiPathDataset(encs, ctok, PackConfig(max_length=30))
    assert len(ds) == 1 and ds.skipped_ids == ["too-long"]
    assert "skipped 1 of 2 examples" in caplog.text and "too-long" in caplog.text


def test_sequential_control(tok, ctok):
    enc = encode_records(_records(2), tok)[0]
    sep = sequential_separator(tok)
    seq, stats = pack_example(enc, ctok, PackConfig(sequential=True), random.Random(0), sep_ids=sep,
                              eos_id=tok.eos_token_id)
    L = len(enc.prompt)
    ids = seq.input_ids
    assert stats == (0, 0, 0) and ids[:L] == enc.prompt.tolist() and ids[-1] == tok.eos_token_id
    assert not set(ids[L:]) & set(ctok.all_ids)  # no ParaThinker tokens in the response
    assert any(ids[L : L + len(p)] == p.tolist() for p in enc.paths)
    assert seq.positions == list(range(len(ids))) and set(seq.segment_ids) == {0}
    assert seq.labels == [IGNORE_INDEX] * (L - 1) + ids[L:] + [IGNORE_INDEX]  # plain causal SFT on the response
    assert "</think>" in tok.decode(ids[L:])
    short = PackConfig(sequential=True, max_length=len(ids) - 3)
    seq2, stats2 = pack_example(enc, ctok, short, random.Random(0), sep_ids=sep, eos_id=tok.eos_token_id)
    assert len(seq2) == len(ids) - 3 and stats2 == (1, 0, 3) and seq2.input_ids[-1] == tok.eos_token_id
    batch = Collator(pad_id=0)([{"input_ids": seq.input_ids, "positions": seq.positions, "segment_ids": seq.segment_ids,
                                 "labels": seq.labels, "kinds": seq.kinds}])
    n = len(ids)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    torch.testing.assert_close(batch["attn_bias"][0, 0], attention_bias(causal))
