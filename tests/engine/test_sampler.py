"""Sampling: bans, greedy, top-k/top-p sets, empirical distribution, per-request reproducibility."""

from __future__ import annotations

import torch

from parathinker.engine import sampler
from parathinker.engine.sampler import Row, sample
from parathinker.params import SamplingParams

NO_BAN = torch.empty(0, dtype=torch.long)


def _row(seed=0, banned=NO_BAN, **kw):
    g = torch.Generator().manual_seed(seed)
    return Row(SamplingParams(**kw), g, banned)


def _allowed(probs, top_k, top_p):
    vals, ids, _, _ = sampler._filtered(probs, [SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p)])
    return {int(i): float(v) for i, v in zip(ids[0], vals[0]) if v > 0}


def test_partial_topk_equals_full_sort_nucleus():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(1, 5000) * 3, -1)
    fast = _allowed(probs, 0, 0.9)
    sorted_p, order = probs.sort(descending=True)
    keep = (sorted_p.cumsum(-1) - sorted_p) < 0.9
    full = {int(i): float(v) for i, v, k in zip(order[0], sorted_p[0], keep[0]) if k}
    assert fast.keys() == full.keys()
    _, _, flag, _ = sampler._filtered(probs, [SamplingParams(temperature=1.0, top_p=0.9)])
    assert flag is None or not flag.any()  # this nucleus fits the window: no redraw


def test_wide_nucleus_is_flagged_and_redrawn_exactly():
    """A near-flat distribution: the nucleus (top ~45% of 5000 tokens) does not fit 1024 candidates."""
    probs = torch.linspace(1.0, 1.2, 5000)[None]
    probs = probs / probs.sum()
    params = [SamplingParams(temperature=1.0, top_p=0.5), SamplingParams(temperature=1.0, top_p=0.5, top_k=100)]
    _, _, flag, _ = sampler._filtered(probs.expand(2, -1), params)
    assert flag.tolist() == [True, False]  # top-k 100 cuts inside the window first: exact already
    mass_before = probs.flip(-1).cumsum(-1) - probs.flip(-1)
    nucleus = 5000 - int((mass_before < 0.5).sum())  # ids >= nucleus are in (ascending probabilities)
    logits = probs.log()
    rows = [_row(s, temperature=1.0, top_p=0.5) for s in range(40)]
    draws = sample(logits.expand(40, -1), rows)
    assert min(draws) >= nucleus and len(set(draws)) > 30  # inside the nucleus, spread across it
    tokens, unsure = sampler.sample_tensor(logits.expand(40, -1), rows)
    assert unsure is not None and unsure.all()


def test_top_k_and_top_p_sets():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert set(_allowed(probs, 2, 1.0)) == {0, 1}
    assert set(_allowed(probs, 0, 0.8)) == {0, 1}  # 0.5 before token 1 < 0.8; 0.8 before token 2 is not
    assert set(_allowed(probs, 0, 0.81)) == {0, 1, 2}
    assert set(_allowed(probs, 0, 0.01)) == {0}
    assert set(_allowed(probs, 3, 0.9)) == {0, 1, 2}  # both: top-3 and a 0.9 nucleus


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
    assert torch.equal(logits, torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])))  # bans go into a copy


def test_seeded_rows_do_not_depend_on_batch_neighbours():
    torch.manual_seed(3)
    logits = torch.randn(3, 1000)
    alone = [sample(logits[:1], [_row(7, temperature=1.0, top_p=0.9)])[0] for _ in range(1)]
    r7 = _row(7, temperature=1.0, top_p=0.9)
    together = sample(logits, [r7, _row(8, temperature=0.7, top_k=5), _row(9, temperature=0.0)])
    assert together[0] == alone[0]
    assert together[2] == int(logits[2].argmax())


def test_engine_redraws_flagged_rows_with_model_logprobs(tiny_qwen2, monkeypatch):
    """A 4-token window at temperature 5: most rows are flagged and redrawn; the reported log-probs
    are still the model's own (== teacher-forced scoring of the generated paths)."""
    from parathinker import LLM, CacheConfig, ParallelParams

    monkeypatch.setattr(sampler, "CANDIDATES", 4)
    llm = LLM(tiny_qwen2, cache=CacheConfig(kv_cache_memory=0.05, page_size=4))
    calls = []
    real = sampler.resample_exact
    monkeypatch.setattr("parathinker.engine.draws.resample_exact", lambda lg, rows: calls.append(len(rows)) or real(lg, rows))
    pp = ParallelParams(num_paths=3, max_path_tokens=6, summary_max_tokens=3)
    out = llm.generate([[5, 6, 7, 8, 9]], pp, SamplingParams(temperature=5.0, top_p=0.95, seed=1))[0]
    assert sum(calls) > 5
    again = llm.generate([[5, 6, 7, 8, 9]], pp, SamplingParams(temperature=5.0, top_p=0.95, seed=1))[0]
    assert [p.token_ids for p in again.paths] == [p.token_ids for p in out.paths]  # still reproducible
    scored = llm.score([5, 6, 7, 8, 9], [p.token_ids for p in out.paths], [])
    for p, (a, _) in zip(out.paths, scored.packed.path_spans):
        body = scored.token_logprobs[a : a + len(p.token_ids)]
        assert max(abs(x - y) for x, y in zip(p.logprobs, body)) <= 1e-4


def test_top_k_row_does_not_depend_on_a_wider_neighbour():
    """A top-k row races over its own k candidates, whatever window the batch needs for other rows."""
    torch.manual_seed(4)
    logits = torch.randn(4, 5000) * 0.3  # flat: the noise decides

    def request(seed, n, **kw):  # n rows of one request: one generator
        r = _row(seed, **kw)
        return [r] * n

    alone = sample(logits[:3], request(5, 3, temperature=1.0, top_k=40))
    together = sample(logits, request(5, 3, temperature=1.0, top_k=40) + request(6, 1, temperature=1.0, top_k=2000))
    assert together[:3] == alone


def test_first_window_draws_the_same_tokens(monkeypatch):
    """The CPU's narrow first window gives the tokens the full window gives, seed for seed: rows whose
    nucleus fits it (peaked logits), rows whose does not (medium ones: those rows take the full window;
    flat ones: not even that, an exact redraw), top-k rows on either side of its width, and batches
    mixing them."""
    torch.manual_seed(5)
    V = 3000
    # nucleus at top-p 0.95: a few tokens / tens to hundreds (across 64: each row its own window) / most of V
    peaked, medium, flat = torch.randn(6, V) * 4, torch.randn(6, V) * 1.5, torch.randn(6, V) * 0.5
    kinds = [dict(temperature=0.6, top_p=0.95), dict(temperature=1.0, top_p=0.9, top_k=20),
             dict(temperature=0.8, top_p=0.95, top_k=200), dict(temperature=1.0, top_p=1.0, top_k=50)]
    used = []
    real = sampler._filtered
    monkeypatch.setattr(sampler, "_filtered", lambda probs, params: used.append(real(probs, params)[0].shape[-1])
                        or real(probs, params))

    def draws(logits, kw, first):
        monkeypatch.setattr(sampler, "FIRST_CANDIDATES", first)
        rows = [_row(seed, **kw) for seed in range(len(logits))]
        return [sample(logits, rows) for _ in range(5)]  # five steps: the generators' streams move on

    for logits in (peaked, medium, flat, torch.cat([peaked[:3], flat[:3]])):
        for kw in kinds:
            assert draws(logits, kw, 64) == draws(logits, kw, sampler.CANDIDATES)
    assert 64 in used and 200 in used and 1024 in used  # both windows ran
