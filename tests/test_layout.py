"""The layout module against the method's rules, written out by hand."""

from __future__ import annotations

import pytest
import torch

from parathinker.errors import ConfigError
from parathinker.layout import IGNORE_INDEX, SUMMARY, LayoutConfig, attention_bias, pack
from parathinker.tokens import ControlTokens, control_token_strings

VOCAB = {t: 100 + i for i, t in enumerate(control_token_strings(8))}
CT = ControlTokens.from_vocab(VOCAB, eos_ids=[2])
O1, C1, O2, C2, O3, C3 = 100, 101, 102, 103, 104, 105
SO, SC = 116, 117


def test_positions_segments_labels_by_hand():
    p = pack([10, 11, 12], [[20, 21], [30], [40, 41, 42]], [50], CT)
    assert p.input_ids == [10, 11, 12, O1, 20, 21, C1, O2, 30, C2, O3, 40, 41, 42, C3, SO, 50, SC]
    # all paths share positions from L=3; summary starts at L + longest path (5 tokens)
    assert p.positions == [0, 1, 2, 3, 4, 5, 6, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10]
    assert p.segment_ids == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 0, 0, 0]
    I = IGNORE_INDEX  # noqa: E741
    assert p.labels == [I, I, I, 20, 21, C1, I, 30, C2, I, 40, 41, 42, C3, I, 50, SC, I]
    assert p.path_spans == [(3, 7), (7, 10), (10, 15)] and p.summary_span == (15, 18)


def test_visibility_two_phase():
    p = pack([10, 11], [[20], [30, 31]], [50], CT)
    v = p.visibility()
    # rows: 10 11 | O1 20 C1 | O2 30 31 C2 | SO 50 SC
    path1, path2, summ = range(2, 5), range(5, 9), range(9, 12)
    for q in path1:
        assert v[q, :2].all() and not v[q, list(path2)].any()
        assert v[q, list(path1)].tolist() == [k <= q for k in path1]
    for q in path2:
        assert not v[q, list(path1)].any()
    for q in summ:
        assert v[q, : q + 1].all() and not v[q, q + 1 :].any()
    assert not v[0, 1]  # prompt causal
    assert p.kinds[-1] == SUMMARY


def test_flat_positions_and_no_thought_embeddings():
    p = pack([10, 11], [[20], [30, 31]], [50], CT, config=LayoutConfig(flat_positions=True, thought_embeddings=False))
    stride = 4  # longest path: O2 30 31 C2
    assert p.positions[2:5] == [2, 3, 4]
    assert p.positions[5:9] == [2 + stride, 3 + stride, 4 + stride, 5 + stride]
    assert p.positions[9] == 2 + 2 * stride
    assert set(p.segment_ids) == {0}


def test_relabelled_think_indices():
    p = pack([10], [[20], [30]], None, CT, think_indices=[7, 2])
    assert p.input_ids == [10, 112, 20, 113, O2, 30, C2]
    assert p.segment_ids == [0, 7, 7, 7, 2, 2, 2]
    with pytest.raises(ConfigError):
        pack([10], [[20], [30]], None, CT, think_indices=[9, 1])
    with pytest.raises(ConfigError):
        pack([10], [[20], [30]], None, CT, think_indices=[1, 1])


def test_attention_bias_is_float_and_finite():
    p = pack([10], [[20]], [50], CT)
    b = attention_bias(p.visibility())
    assert b.dtype == torch.float32 and torch.isfinite(b).all()
    assert (b == 0).sum() == p.visibility().sum()
