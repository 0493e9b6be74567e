"""Sampling: bans, greedy, top-k/top-p sets, empirical distribution, per-request reproducibility."""

from __future__ import annotations

import torch

from parathinker.engine import sampler
from parathinker.engine.params import SamplingParams
from parathinker.engine.sampler import Row, sample

NO_BAN = torch.empty(0, dtype=torch.long)


def _row(seed=0, banned=NO_BAN, **kw):
    g = torch.Generator().manual_seed(seed)
    return Row(SamplingParams(**kw), g, banned)


def _allowed(probs, top_k, top_p):
    vals, ids = sampler._candidates(probs, top_k, top_p)
    return {int(i): float(v) for i, v in zip(ids[0], vals[0]) if v > 0}


def test_partial_topk_equals_full_sort_nucleus():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(1, 5000) * 3, -1)
    fast = _allowed(probs, 0, 0.9)
    sorted_p, order = probs.sort(descending=True)
    keep = (sorted_p.cumsum(-1) - sorted_p) < 0.9
    full = {int(i): float(v) for i, v, k in zip(order[0], sorted_p[0], keep[0]) if k}
    assert fast.keys() == full.keys()
    # a flat distribution whose nucleus exceeds the candidate window falls back to the full sort
    flat = torch.full((1, 5000), 1 / 5000)
    assert abs(len(_allowed(flat, 0, 0.5)) - 2500) <= 1  # float rounding of the running mass


def test_top_k_and_top_p_sets():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert set(_allowed(probs, 2, 1.0)) == {0, 1}
    assert set(_allowed(probs, 0, 0.8)) == {0, 1}  # 0.5 before token 1 < 0.8; 0.8 before token 2 is not
    assert set(_allowed(probs, 0, 0.81)) == {0, 1, 2}
    assert set(_allowed(probs, 0, 0.01)) == {0}


def test_empirical_distribution_and_bans():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    n = 4000
    counts = torch.zeros(4)
    row = _row(1, temperature=1.0, top_p=1.0)
    for _ in range(n):
        counts[sample(logits, [row])[0]] += 1
    assert torch.allclose(counts / n, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03)
    banned = _row(2, banned=torch.tensor([0, 1]), temperature=1.0, top_p=1.0)
    draws = {sample(logits, [banned])[0] for _ in range(200)}
    assert draws == {2, 3}
    assert sample(logits, [_row(banned=torch.tensor([0]), temperature=0.0)]) == [1]  # greedy respects bans


def test_seeded_rows_do_not_depend_on_batch_neighbours():
    torch.manual_seed(3)
    logits = torch.randn(3, 1000)
    alone = [sample(logits[:1], [_row(7, temperature=1.0, top_p=0.9)])[0] for _ in range(1)]
    r7 = _row(7, temperature=1.0, top_p=0.9)
    together = sample(logits, [r7, _row(8, temperature=0.7, top_k=5), _row(9, temperature=0.0)])
    assert together[0] == alone[0]
    assert together[2] == int(logits[2].argmax())
