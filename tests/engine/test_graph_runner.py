"""The static decode path (per-bucket buffers, padded rows, page tables) against the reference backend.

On the CPU nothing is captured: the same buffers and forward run eagerly, the kernel in Triton's
interpreter. tests/gpu/test_graphs_cuda.py replays the captured graphs on a GPU.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from parathinker import LLM, CacheConfig, DecodeConfig, ParallelParams, SamplingParams  # noqa: E402
from parathinker.engine.block_manager import PagePool  # noqa: E402
from parathinker.engine.decode import graphs as graph_runner  # noqa: E402
from parathinker.engine.decode.graphs import bucket_for
from parathinker.engine.plan import (  # noqa: E402
    Caps,
    Chunk,  # noqa: E402
    Plan,
)

needs_cpu = pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter test; tests/gpu runs the real one")


def test_buckets():
    assert [bucket_for(n) for n in (1, 2, 3, 5, 9, 17, 25, 33, 49, 65, 257, 513, 600)] == [
        1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 320, 576, 640]


def test_plan_shares_prompts_and_grows_capacities():
    pool = PagePool(64, 4)
    pool.admit(0, 63)
    prompt, other = pool.new_run(), pool.new_run()
    pool.extend(prompt, 10, 0)
    pool.extend(other, 3, 0)
    owns = [pool.new_run() for _ in range(4)]
    for r in owns:
        pool.extend(r, 1, 0)

    def chunk(reads, shared):
        return Chunk([7], [10], [1], [reads[-1].slot(reads[-1].length - 1)], reads, shared_prefix=shared)

    # rows 0-2 share the prompt (split into lists of 2 rows), row 3 reads `other` alone (a private list)
    chunks = [chunk([prompt, owns[i]], True) for i in range(3)] + [chunk([other, owns[3]], True)]
    plan = Plan.from_chunks(chunks, max_rows=2)
    assert [rows for _, rows in plan.shared] == [[0, 1], [2]]
    assert all(run is prompt for run, _ in plan.shared)
    assert [(run, r) for run, r in plan.single] == [(owns[0], 0), (owns[1], 1), (owns[2], 2), (other, 3), (owns[3], 3)]
    need = plan.need()
    assert need == Caps(shared_lists=2, shared_rows=2, shared_pages=3, single_lists=5, single_pages=1, row_entries=2)
    caps = Caps(0, 0, 0, 0, 0, 0).grown(need, min_pages=4, max_pages=100, max_q=2)
    assert caps == Caps(shared_lists=2, shared_rows=2, shared_pages=4, single_lists=8, single_pages=4, row_entries=2) and caps.covers(need)
    bigger = caps.grown(Caps(1, 2, 9, 1, 1, 3), min_pages=4, max_pages=10, max_q=2)
    assert bigger == Caps(shared_lists=2, shared_rows=2, shared_pages=10, single_lists=8, single_pages=4, row_entries=4)  # pages capped (by the pool)


@needs_cpu
def test_static_triton_step_smoke(tiny_qwen2, monkeypatch):
    """The default suite's one engine-level run of the Triton decode path (interpreted: ~0.5 s a step):
    3 paths (bucket 4: a padded row), page tables that must grow; the slow tests below go wider."""
    monkeypatch.setattr(graph_runner, "MIN_TOKENS", 1)
    cache = dict(kv_cache_memory=0.05, page_size=4)
    ref = LLM(tiny_qwen2, cache=CacheConfig(**cache), decode=DecodeConfig(attention="reference"))
    tri = LLM(tiny_qwen2, cache=CacheConfig(**cache), decode=DecodeConfig(attention="triton"))
    rng = random.Random(7)
    prompt = [rng.randrange(4, 50) for _ in range(9)]
    paths = [[rng.randrange(4, 50) for _ in range(n)] for n in (1, 2, 1)]
    a, b = ref.score(prompt, paths, [7]), tri.score(prompt, paths, [7])
    diffs = [abs(x - y) for x, y in zip(a.token_logprobs, b.token_logprobs) if x == x]
    assert len(diffs) >= 6 and max(diffs) <= 1e-4
    dec = tri.engine.runner.decoder
    assert 4 in dec.states and max(st.caps.single_pages for st in dec.states.values()) >= 3  # grew from 1-page tables


@pytest.mark.slow
@needs_cpu
def test_static_padded_path_scores_like_reference(tiny_qwen2, monkeypatch):
    """Teacher-forced scoring of 1, 3 and 5 paths (buckets 1, 4, 8: padded rows), page tables that grow."""
    monkeypatch.setattr(graph_runner, "MIN_TOKENS", 1)  # start with 1-page tables: every run re-grows them
    cache = dict(kv_cache_memory=0.05, page_size=4)
    ref = LLM(tiny_qwen2, cache=CacheConfig(**cache), decode=DecodeConfig(attention="reference"))
    tri = LLM(tiny_qwen2, cache=CacheConfig(**cache), decode=DecodeConfig(attention="triton"))
    rng = random.Random(5)
    for num_paths in (1, 3, 5):
        prompt = [rng.randrange(4, 50) for _ in range(9)]
        paths = [[rng.randrange(4, 50) for _ in range(rng.randrange(1, 8))] for _ in range(num_paths)]
        summary = [rng.randrange(4, 50) for _ in range(3)]
        a, b = ref.score(prompt, paths, summary), tri.score(prompt, paths, summary)
        diffs = [abs(x - y) for x, y in zip(a.token_logprobs, b.token_logprobs) if x == x]
        assert max(diffs) <= 1e-4, num_paths
    dec = tri.engine.runner.decoder
    assert set(dec.states) >= {1, 4, 8}
    assert dec.stats["eager"] > 0 and dec.stats["replays"] == 0  # no graphs off CUDA
    assert max(st.caps.single_pages for st in dec.states.values()) >= 4  # grew past the first 1-page tables


@pytest.mark.slow  # Triton's interpreter: ~20 s
@needs_cpu
def test_static_path_generation_with_split_shared_prompts(tiny_llama, monkeypatch):
    """Two majority requests x 5 greedy samples (10 rows, bucket 16), each prompt in 3 shared lists."""
    monkeypatch.setattr(graph_runner, "MAX_QG", 4)  # G = 2: at most 2 rows per shared list
    cache = dict(kv_cache_memory=0.05, page_size=8)
    ref = LLM(tiny_llama, cache=CacheConfig(**cache), decode=DecodeConfig(attention="reference"))
    tri = LLM(tiny_llama, cache=CacheConfig(**cache), decode=DecodeConfig(attention="triton"))
    pp = ParallelParams(mode="majority", num_paths=5, max_path_tokens=6)
    sp = SamplingParams(temperature=0.0, ignore_eos=True)
    prompts = ["what is 1 + 2 ?", "the goal is node 3 from node 1 then back"]
    ga, gb = ref.generate(prompts, pp, sp, raw=True), tri.generate(prompts, pp, sp, raw=True)
    for x, y in zip(ga, gb):
        assert [p.token_ids for p in x.paths] == [p.token_ids for p in y.paths]
        for p, q in zip(x.paths, y.paths):
            assert max(abs(u - v) for u, v in zip(p.logprobs, q.logprobs)) <= 1e-4
    st = tri.engine.runner.decoder.states[16]
    assert st.caps.shared_lists >= 6 and st.caps.shared_rows == 2


@pytest.mark.slow
@needs_cpu
def test_static_path_reads_a_pool_grown_mid_run(tiny_qwen2, monkeypatch):
    """A growable pool (CPU, no budget) that grows while a request decodes: the Triton path's buffers and
    page tables follow the new tensor (set_cache) and both requests get their fixed-pool tokens."""
    from parathinker.engine import kv_cache
    from parathinker.engine.sequence import RequestSpec

    specs = [RequestSpec([5, 6, 7], ParallelParams(num_paths=2, max_path_tokens=6, summary_max_tokens=3),
                         SamplingParams(temperature=0.0), [30]),
             RequestSpec([9, 8, 7, 6], ParallelParams(num_paths=3, max_path_tokens=8, summary_max_tokens=3),
                         SamplingParams(temperature=1.0, seed=2), [30])]
    fixed = LLM(tiny_qwen2, cache=CacheConfig(num_pages=64, page_size=4), decode=DecodeConfig(attention="triton"))
    alone = [[s.body for s in (*r.seqs, r.summary)] for r in (fixed.engine.run([sp])[0] for sp in specs)]
    monkeypatch.setattr(kv_cache, "CPU_POOL_INITIAL_PAGES", 2)
    llm = LLM(tiny_qwen2, cache=CacheConfig(page_size=4), decode=DecodeConfig(attention="triton"))
    eng = llm.engine
    ids, out, k = [eng.add_request(specs[0])], {}, 0
    while eng.has_unfinished() or k < 3:
        if k == 2:
            pages = eng.pool.num_pages
            ids.append(eng.add_request(specs[1]))
        for d in eng.step():
            if d.finished:
                out[d.request_id] = d.output
        if k == 2:
            assert eng.pool.num_pages > pages and eng.num_running == 2  # grew with the first one running
        k += 1
    got = [[p.token_ids for p in o.paths] + [o.summary.token_ids] for o in (out[i] for i in ids)]
    assert got == alone
