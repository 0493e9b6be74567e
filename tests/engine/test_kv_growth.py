"""The CPU KV pool without a budget: it starts small, grows as the queued requests need it (also while
others run: their pages keep their contents), and a request larger than a fixed default would have
allowed runs instead of failing. Every output is compared with the same request run alone on a
large fixed pool: where the pages live must not change a token.
"""

from __future__ import annotations

import pytest
from scenarios import all_seqs, mixed_specs

from parathinker import LLM, CacheConfig, ParallelParams, SamplingParams
from parathinker.engine import kv_cache
from parathinker.engine.sequence import RequestSpec
from parathinker.errors import OutOfPagesError


def tokens(reqs) -> list:  # noqa: ANN001
    return [[(s.role, s.body, s.finish_reason) for s in all_seqs(r)] for r in reqs]


@pytest.fixture(scope="module")
def fixed(tiny_qwen2) -> LLM:  # noqa: ANN001
    return LLM(tiny_qwen2, dtype="float32", cache=CacheConfig(num_pages=512, page_size=4))


def growable(ckpt, monkeypatch, initial: int = 4, **limits: float) -> LLM:  # noqa: ANN001
    monkeypatch.setattr(kv_cache, "CPU_POOL_INITIAL_PAGES", initial)
    for name, value in limits.items():
        monkeypatch.setattr(kv_cache, name, value)
    llm = LLM(ckpt, dtype="float32", cache=CacheConfig(page_size=4))
    kv = llm.engine.runner.kv
    assert kv.growable and llm.engine.pool.num_pages == kv.num_pages == min(initial, kv.queue_pages)
    return llm


def test_the_pool_grows_while_requests_run_and_keeps_their_kv(fixed: LLM, tiny_qwen2, monkeypatch) -> None:  # noqa: ANN001
    specs = mixed_specs()
    alone = [tokens(fixed.engine.run([s]))[0] for s in specs]
    llm = growable(tiny_qwen2, monkeypatch)
    eng = llm.engine
    grown_with_running: list[int] = []
    grow = eng.runner.grow_kv

    def spy(num_pages: int) -> None:
        if eng.scheduler.running:
            grown_with_running.append(num_pages)
        grow(num_pages)

    eng.runner.grow_kv = spy  # type: ignore[method-assign]
    ids, got, k = [], {}, 0
    schedule = {0: specs[:1], 2: specs[1:3], 4: specs[3:4], 6: specs[4:]}
    while k <= max(schedule) or eng.has_unfinished():
        ids += [eng.add_request(s) for s in schedule.get(k, [])]
        for d in eng.step():
            if d.finished:
                got[d.request_id] = d.output
        k += 1
    assert grown_with_running, "no growth happened while requests ran"
    kinds = {"parathinker": "path", "reprefill": "path", "majority": "sample", "sequential": "sample"}
    outs = [[(kinds[o.mode], p.token_ids, p.finish_reason) for p in o.paths]
            + ([("reprefill" if o.mode == "reprefill" else "summary", o.summary.token_ids, o.summary.finish_reason)]
               if o.summary else []) for o in (got[i] for i in ids)]
    assert outs == alone
    assert eng.kv_pages_used == 0 and eng.pool.num_free == eng.pool.usable_pages
    assert eng.runner.kv.data.shape[2] == eng.pool.num_pages * 4


def test_queue_growth_stops_at_its_cap_and_requests_wait(fixed: LLM, tiny_qwen2, monkeypatch) -> None:  # noqa: ANN001
    specs = [RequestSpec([5 + i, 6, 7], ParallelParams(num_paths=3, max_path_tokens=10, summary_max_tokens=4),
                         SamplingParams(temperature=1.0, seed=i), [30]) for i in range(6)]
    alone = [tokens(fixed.engine.run([s]))[0] for s in specs]
    need = fixed.engine.check(specs[0])
    cap_bytes = (2 * need + 1) * kv_cache.KVCache(fixed.model.config, CacheConfig(page_size=4), fixed.model.dtype,
                                                  fixed.model.device).page_bytes
    llm = growable(tiny_qwen2, monkeypatch, CPU_POOL_MAX_GIB=cap_bytes / 2**30)
    eng = llm.engine
    assert eng.runner.kv.queue_pages == 2 * need + 1
    # what kv_cache_usage_perc divides by: what the pool may grow to for queued requests, not its size now
    assert eng.kv_pages_total == 3 and eng.kv_pages_capacity == 2 * need
    reqs = eng.run(specs)
    assert tokens(reqs) == alone
    assert eng.pool.num_pages == 2 * need + 1  # two at a time, never more


def test_a_request_larger_than_the_queue_cap_runs_alone(fixed: LLM, tiny_qwen2, monkeypatch) -> None:  # noqa: ANN001
    big = RequestSpec([5, 6, 7], ParallelParams(num_paths=8, max_path_tokens=40, summary_max_tokens=8),
                      SamplingParams(temperature=1.0, seed=3), [30])
    small = RequestSpec([9, 6, 7], ParallelParams(num_paths=2, max_path_tokens=6, summary_max_tokens=4),
                        SamplingParams(temperature=1.0, seed=4), [30])
    alone = [tokens(fixed.engine.run([s]))[0] for s in (small, big)]
    llm = growable(tiny_qwen2, monkeypatch, CPU_POOL_MAX_GIB=1e-6)  # a fixed pool this size could not hold `big`
    eng = llm.engine
    assert eng.check(big) > eng.runner.kv.queue_pages
    assert tokens(eng.run([small, big])) == alone
    assert eng.pool.num_pages == eng.check(big) + 1
    assert eng.kv_pages_capacity == eng.kv_pages_total == eng.check(big)  # grown past the queue's cap: its size


def test_growth_is_bounded_by_free_memory(tiny_qwen2, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(kv_cache, "available_memory", lambda: 2**20)  # 1 MiB free: the pool may take half
    llm = growable(tiny_qwen2, monkeypatch)
    kv = llm.engine.runner.kv
    assert kv.max_pages == int(0.5 * 2**20 // kv.page_bytes)
    huge = RequestSpec([5, 6, 7], ParallelParams(num_paths=8, max_path_tokens=1000), SamplingParams(), [30])
    with pytest.raises(OutOfPagesError, match=r"can grow to \d+ \(half of the free memory\): lower the token "
                                              r"budgets \(max_path_tokens, summary_max_tokens\)"):
        llm.engine.add_request(huge)


def test_a_budget_or_page_count_is_a_fixed_pool(tiny_qwen2) -> None:  # noqa: ANN001
    page_bytes = LLM(tiny_qwen2, dtype="float32", cache=CacheConfig(num_pages=2, page_size=4)).engine.runner.kv.page_bytes
    for cache in (CacheConfig(kv_cache_memory=12 * page_bytes / 2**30, page_size=4), CacheConfig(num_pages=12, page_size=4)):
        llm = LLM(tiny_qwen2, dtype="float32", cache=cache)
        kv = llm.engine.runner.kv
        assert not kv.growable and kv.max_pages == kv.num_pages == llm.engine.pool.num_pages == 12
        assert llm.engine.kv_pages_capacity == llm.engine.kv_pages_total == 11
        with pytest.raises(OutOfPagesError, match="has 11: raise kv_cache_memory"):
            llm.engine.add_request(RequestSpec([5, 6], ParallelParams(num_paths=8, max_path_tokens=20),
                                               SamplingParams(), [30]))


def test_the_bundled_models_pool_is_what_its_request_needs() -> None:
    """The bundled 3M-parameter model (CPU, no budget): a few MiB of KV, not a fixed default's 256 MiB-2 GiB."""
    q = ("graph : 19 > 72 , 73 > 48 , 77 > 49 , 96 > 98 , 52 > 73 , 52 > 77 , 19 > 26 , 62 > 96 , 77 > 62 , "
         "35 > 45 , 93 > 10 , 48 > 57 , 49 > 51 , 48 > 93 , 52 > 35 , 45 > 19 ; find path 52 to 57")
    llm = LLM(None, threads="auto")
    (out,) = llm.generate(q, sampling=SamplingParams(seed=0))
    kv, need = llm.engine.runner.kv, llm.engine.check(llm.request_spec(q))
    assert out.answer == "52 73 48 57"
    assert kv.num_pages <= max(kv_cache.CPU_POOL_INITIAL_PAGES, int((need + 1) * kv_cache.GROWTH) + 1)
    assert kv.nbytes < 4 * 2**20, kv.nbytes
