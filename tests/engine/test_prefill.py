"""Long chunks in pieces (bounded masks) and forced paths prefilled as chunks: same numbers as the plain way."""

from __future__ import annotations

import math
import random

import pytest
import torch

from parathinker import LLM, CacheConfig, DecodeConfig, ParallelParams
from parathinker.engine import runner as runner_mod
from parathinker.layout import visibility_from_kinds, visibility_rows


def _case(seed: int, paths: int = 3):
    rng = random.Random(seed)
    prompt = [rng.randrange(4, 50) for _ in range(23)]
    bodies = [[rng.randrange(4, 50) for _ in range(rng.randrange(5, 12))] for _ in range(paths)]
    return prompt, bodies, [rng.randrange(4, 50) for _ in range(4)]


def _forwards(llm: LLM, fn):  # noqa: ANN001, ANN202 - (result, forwards it took)
    n = llm.engine.runner.num_forwards
    out = fn()
    return out, llm.engine.runner.num_forwards - n


def _close(a: list[float], b: list[float], tol: float = 1e-4) -> bool:
    return len(a) == len(b) and all((math.isnan(x) and math.isnan(y)) or abs(x - y) <= tol for x, y in zip(a, b))


def test_visibility_rows_are_rows_of_the_full_mask():
    kinds = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, -1, -1])
    full = visibility_from_kinds(kinds.tolist())
    for a, b in [(0, 11), (0, 4), (3, 9), (8, 11), (10, 11)]:
        assert torch.equal(visibility_rows(kinds, a, b), full[a:b, :b])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("mode", ["parathinker", "reprefill"])
def test_long_chunks_in_pieces_score_the_same(tiny_qwen2, monkeypatch, mode, causal):
    """A budget of 64 (rows x keys) cuts the prompt prefill and the re-prefill into many pieces
    (PagedCausal pieces, or the masked reference's)."""
    prompt, bodies, summary = _case(1)
    llm = LLM(tiny_qwen2, cache=CacheConfig(kv_cache_memory=0.05, page_size=4),
              decode=DecodeConfig(reference_prefill=not causal))
    pp = ParallelParams(num_paths=3, mode=mode)
    whole, n_whole = _forwards(llm, lambda: llm.score(prompt, bodies, summary, pp))
    monkeypatch.setattr(runner_mod, "MAX_MASK_ELEMENTS", 64)
    pieces, n_pieces = _forwards(llm, lambda: llm.score(prompt, bodies, summary, pp))
    assert _close(whole.token_logprobs, pieces.token_logprobs)
    assert n_pieces - n_whole >= 10  # really cut: the 23-token prompt alone needs > 10 pieces of <= 64 mask elements


@pytest.mark.parametrize("mode", ["parathinker", "reprefill"])
def test_prefilled_forced_paths(tiny_qwen2, mode):
    """path_logprobs=False: bodies in one chunk each; close tokens and the summary score the same."""
    prompt, bodies, summary = _case(2)
    llm = LLM(tiny_qwen2, cache=CacheConfig(kv_cache_memory=0.05, page_size=4))
    pp = ParallelParams(num_paths=3, mode=mode)
    slow, n_slow = _forwards(llm, lambda: llm.score(prompt, bodies, summary, pp))
    fast, n_fast = _forwards(llm, lambda: llm.score(prompt, bodies, summary, pp, path_logprobs=False))
    packed = slow.packed
    body_idx = {k for a, b in packed.path_spans for k in range(a, b - 2)}  # predicting a body token
    for k, (x, y) in enumerate(zip(slow.token_logprobs, fast.token_logprobs)):
        if k in body_idx:
            assert math.isnan(y)
        else:
            assert (math.isnan(x) and math.isnan(y)) or abs(x - y) <= 1e-4, k
    a, _ = packed.summary_span
    assert not math.isnan(fast.token_logprobs[a])  # the summary's first prediction is scored
    assert n_fast < n_slow - 5  # no token-by-token path decoding


@pytest.mark.parametrize("mode", ["parathinker", "reprefill", "majority"])
def test_multi_token_chunks_through_paged_causal(tiny_llama, mode):
    """Prompts (fresh k'/v'), forced chunks after a context and re-prefill segments go through PagedCausal
    (SDPA causal modes, no mask tensor): the same numbers as the masked reference backend."""
    from parathinker import SamplingParams

    prompt, bodies, summary = _case(3)
    llm = LLM(tiny_llama, cache=CacheConfig(kv_cache_memory=0.05, page_size=4))
    pp = ParallelParams(mode="majority", num_paths=3, max_path_tokens=6)

    def run():  # noqa: ANN202
        if mode == "majority":
            return [p.logprobs for p in llm.generate([prompt], pp, SamplingParams(temperature=1.0, seed=4))[0].paths]
        return [llm.score(prompt, bodies, summary, ParallelParams(num_paths=3, mode=mode),
                          path_logprobs=False).token_logprobs]

    calls = []
    real = runner_mod.PagedCausal
    runner_mod.PagedCausal = lambda cache, slots, read: calls.append(read is None) or real(cache, slots, read)
    try:
        fast = run()
    finally:
        runner_mod.PagedCausal = real
    assert True in calls  # the prompt, over its fresh k'/v'
    if mode != "majority":
        assert False in calls  # forced path bodies (after the prompt) and re-prefill segments, over pool keys
    llm = LLM(tiny_llama, cache=CacheConfig(kv_cache_memory=0.05, page_size=4), decode=DecodeConfig(reference_prefill=True))
    ref = run()
    assert all(_close(a, b, 1e-5) for a, b in zip(fast, ref))


def test_reprefill_segments_read_only_what_they_see(tiny_qwen2, monkeypatch):
    """Each path of a re-prefill reads the prompt and itself; the summary everything (layout.sees)."""
    prompt, bodies, summary = _case(5, paths=4)
    llm = LLM(tiny_qwen2, cache=CacheConfig(kv_cache_memory=0.05, page_size=4))
    reads = []
    real = runner_mod.PagedCausal

    def spy(cache, slots, read):  # noqa: ANN001, ANN202 - (new tokens, keys read) of each piece
        reads.append((slots.shape[1], slots.shape[1] if read is None else read.shape[1]))
        return real(cache, slots, read)

    monkeypatch.setattr(runner_mod, "PagedCausal", spy)
    out = llm.score(prompt, bodies, summary, ParallelParams(num_paths=4, mode="reprefill"))
    packed = out.packed
    segs = [(len(prompt), len(prompt))]  # (new tokens, keys read) expected per segment
    segs += [(b - a, len(prompt) + b - a) for a, b in packed.path_spans]
    s_a, _ = packed.summary_span
    segs.append((1, s_a + 1))  # the summary's opening token (its forced body is decoded after)
    assert reads[-len(segs):] == segs


def test_prompts_prefilled_together_equal_one_by_one(tiny_qwen2, monkeypatch):
    """Five requests of different prompt lengths: one packed prefill forward, same draws and log-probs."""
    from parathinker import SamplingParams

    rng = random.Random(9)
    prompts = [[rng.randrange(4, 50) for _ in range(n)] for n in (3, 17, 9, 30, 1)]
    pp = ParallelParams(num_paths=3, max_path_tokens=5, summary_max_tokens=3)
    sp = SamplingParams(temperature=1.0, seed=2)
    llm = LLM(tiny_qwen2, cache=CacheConfig(kv_cache_memory=0.05, page_size=4))
    packs = []
    real = runner_mod.PackedPrompts
    monkeypatch.setattr(runner_mod, "PackedPrompts", lambda cache, slots, lens, *a: packs.append(lens) or real(cache, slots, lens, *a))
    together = llm.generate(prompts, pp, sp)
    assert packs and packs[0] == [3, 17, 9, 30, 1]  # all five in one forward
    monkeypatch.setattr(runner_mod, "MAX_PREFILL_TOKENS", 1)  # each prompt alone
    alone = llm.generate(prompts, pp, sp)
    for a, b in zip(together, alone):
        assert [p.token_ids for p in a.paths] == [p.token_ids for p in b.paths]
        assert a.summary.token_ids == b.summary.token_ids
        assert all(_close(x.logprobs, y.logprobs, 1e-5) for x, y in zip(a.paths, b.paths))


def test_summary_openings_packed_with_a_prompt_equal_alone(tiny_qwen2, monkeypatch):
    """A request opens its summary (a forced multi-token chunk over prompt + paths) in the same step as another
    request's prompt is prefilled: one packed forward holds both chunks, and every token and log-prob equals
    running each chunk in its own forward."""
    from parathinker import SamplingParams
    from parathinker.engine.sequence import RequestSpec

    pp = ParallelParams(num_paths=3, max_path_tokens=4, summary_max_tokens=3)
    specs = [RequestSpec([5 + i, 6, 7, 8 + i], pp, SamplingParams(temperature=1.0, seed=i, ignore_eos=True), [30, 31, 32])
             for i in range(3)]
    packs = []
    real = runner_mod.PackedPrompts

    def spy(cache, slots, lens, reads=None):  # noqa: ANN001, ANN202 - (prompts, chunks after a context) per forward
        packs.append((sum(r is None for r in reads or [None] * len(lens)), sum(r is not None for r in reads or [])))
        return real(cache, slots, lens, reads)

    monkeypatch.setattr(runner_mod, "PackedPrompts", spy)

    def run() -> list:
        eng = LLM(tiny_qwen2, cache=CacheConfig(kv_cache_memory=0.05, page_size=4)).engine
        eng.prefill_thread = False  # the prompt in the step's packed forward, not on the prefill thread
        ids = [eng.add_request(s, stream=False) for s in specs[:2]]
        sched = eng.scheduler
        while not any(len(s.pending) > 1 for r in sched.running for s in sched.live(r)):  # up to the openings' step
            eng.step()
        ids.append(eng.add_request(specs[2], stream=False))
        while eng.has_unfinished():
            eng.step()
        done = {r.id: r for r in eng.finished}
        return [([s.body for s in done[i].seqs], done[i].summary.body, [s.logprobs for s in done[i].seqs],
                 done[i].summary.logprobs) for i in ids]

    together = run()
    assert any(p and c for p, c in packs), packs  # the third prompt and a summary opening in one forward
    monkeypatch.setattr(runner_mod, "MAX_PREFILL_TOKENS", 1)  # every chunk alone
    packs.clear()
    alone = run()
    assert not packs
    for (pa, sa, la, ma), (pb, sb, lb, mb) in zip(together, alone):
        assert (pa, sa) == (pb, sb)
        assert all(_close(x, y, 1e-6) for x, y in zip(la, lb)) and _close(ma, mb, 1e-6)
