"""The torch cascade decode backend (the CPU default) against the reference backend.

The cascade reads a request's shared prompt once for all its paths and merges that partial
softmax with each row's private keys by log-sum-exp; the reference gathers every key of every row
and masks. Same logits up to float rounding, so greedy generations are identical.
"""

from __future__ import annotations

import os
import random

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")  # the triton row runs in Triton's CPU interpreter (set before import)

from scenarios import churn_equals_reference  # noqa: E402

from parathinker import LLM, CacheConfig, DecodeConfig, ParallelParams, SamplingParams  # noqa: E402
from parathinker.engine.attention.cascade import PagedCascade  # noqa: E402


@pytest.fixture(autouse=True, params=["grouped", "threshold"])
def grouping(request, monkeypatch):  # noqa: ANN001, ANN201
    """Every test twice: rows sharing a prompt always read it as a group (the cascade's merge path), and with
    the default threshold (these tests' short prompts are then read per row, one SDPA call)."""
    from parathinker.engine.attention import cascade as attention

    if request.param == "grouped":
        monkeypatch.setattr(attention, "CASCADE_MIN_SAVED_KEYS", 0)
        monkeypatch.setattr(attention, "CASCADE_MIN_GROUP_KEYS", 0)
    return request.param


def _reference(cache, chunks, keys, layer, q, k, v):  # noqa: ANN001, ANN202
    """The oracle backend's output for rows whose keys are ``keys`` (slot lists, in order)."""
    from parathinker.engine.attention.reference import PagedReference, build_metadata

    meta = build_metadata([c.new_slots for c in chunks], keys, [None] * len(chunks), "cpu")
    return PagedReference(cache.clone(), meta)(layer, q, k, v)


def _pair(ckpt):  # noqa: ANN001
    return [LLM(ckpt, cache=CacheConfig(kv_cache_memory=0.05, page_size=4), decode=DecodeConfig(attention=a)) for a in ("cascade", "reference")]


def test_cascade_is_the_cpu_default(tiny_qwen2):
    from parathinker.engine.decode.backend import CascadeDecode

    engine = LLM(tiny_qwen2, cache=CacheConfig(kv_cache_memory=0.05)).engine
    assert isinstance(engine.runner.decoder, CascadeDecode) and engine.scheduler.side_by_side_paths


@pytest.mark.parametrize("num_paths", [1, 3, 8])
def test_cascade_scores_equal_reference(tiny_qwen2, num_paths):
    """Teacher-forced: every path token and summary token is a decode step (summary rows: all private)."""
    cas, ref = _pair(tiny_qwen2)
    rng = random.Random(num_paths)
    prompt = [rng.randrange(4, 50) for _ in range(37)]
    paths = [[rng.randrange(4, 50) for _ in range(rng.randrange(1, 30))] for _ in range(num_paths)]
    summary = [rng.randrange(4, 50) for _ in range(7)]
    a, b = cas.score(prompt, paths, summary), ref.score(prompt, paths, summary)
    diff = max(abs(x - y) for x, y in zip(a.token_logprobs, b.token_logprobs) if x == x)
    assert diff <= 1e-5, diff


@pytest.mark.parametrize(("ckpt", "mode", "paths", "requests"), [
    ("tiny_qwen2", "majority", 8, 3), ("tiny_llama", "parathinker", 4, 2), ("tiny_qwen2", "sequential", 1, 4)])
def test_cascade_generation_equals_reference(request, ckpt, mode, paths, requests):
    """Several requests decoding together: groups of different prompt lengths, greedy, same tokens."""
    cas, ref = _pair(request.getfixturevalue(ckpt))
    pp = ParallelParams(mode=mode, num_paths=paths, max_path_tokens=20, summary_max_tokens=6)
    sp = SamplingParams(temperature=0.0, ignore_eos=True)
    prompts = ["what is " + " ".join(["two plus three"] * (i + 1)) + " ?" for i in range(requests)]
    for a, b in zip(cas.generate(prompts, pp, sp, raw=True), ref.generate(prompts, pp, sp, raw=True)):
        assert [p.token_ids for p in a.paths] == [p.token_ids for p in b.paths]
        for p, q in zip(a.paths, b.paths):
            assert max((abs(u - v) for u, v in zip(p.logprobs, q.logprobs)), default=0.0) <= 1e-5
        if a.summary is not None:
            assert a.summary.token_ids == b.summary.token_ids


@pytest.mark.parametrize("shared", [False, True])
def test_cascade_reads_pages_with_a_gap(shared, grouping):
    """Pages 24, 30, 26, 27 (+ 28 for the row's own token): first and last slot 96 and 111 (112) as if the
    keys were one stretch, but 100-103 are not among them and 120-123 are. A slice would read the wrong keys."""
    import torch

    from parathinker.engine.attention.cascade import PagedCascade
    from parathinker.engine.block_manager import Run
    from parathinker.engine.plan import Chunk

    g = torch.Generator().manual_seed(0)
    cache = torch.randn(1, 2, 160, 2, 8, generator=g)  # (layers, k/v, slots, kv heads, dim)
    run = Run(4, pages=[24, 30, 26, 27])
    run.slot_list = [run.slot(i) for i in range(16)]
    run.length = 16
    assert run.slot_list[0] == 96 and run.slot_list[-1] == 111 and 100 not in run.slot_list
    own = [Run(4, pages=[28 + 4 * i], length=1, slot_list=[4 * (28 + 4 * i)]) for i in range(2 if shared else 1)]
    chunks = [Chunk([5], [16], [0], o.slot_list, [run, o], shared_prefix=shared) for o in own]
    B = len(chunks)
    q, k, v = torch.randn(B, 1, 4, 8, generator=g), torch.randn(B, 1, 2, 8, generator=g), torch.randn(B, 1, 2, 8, generator=g)
    got = PagedCascade.for_chunks(cache.clone(), chunks, torch.device("cpu"))(0, q, k, v)
    want = _reference(cache, chunks, [run.slot_list + o.slot_list for o in own], 0, q, k, v)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool_end", [False, True])
def test_cascade_reads_side_by_side_blocks_in_place(pool_end, grouping):
    """Rows whose own pages are side-by-side blocks (``PagePool.take_block``) are read as one strided view,
    shorter rows masked; equal to the reference. When the view would run past the pool (the last row shorter
    and its block at the pool's end), the rows are gathered instead."""
    import torch

    from parathinker.engine.block_manager import Run
    from parathinker.engine.plan import Chunk

    g = torch.Generator().manual_seed(1)
    lens = [9, 5, 7] if not pool_end else [9, 7, 5]
    slots = 4 * (10 + 3 * 2) + (5 if pool_end else 12)  # the pool ends right after the last row's slots, or its block
    cache = torch.randn(1, 2, slots, 2, 8, generator=g)
    prompt = Run(4, pages=[1, 2], length=8, slot_list=list(range(4, 12)))
    own = []
    for b, n in enumerate(lens):
        r = Run(4, pages=[10 + 3 * b, 11 + 3 * b, 12 + 3 * b])
        r.slot_list, r.length = [r.slot(i) for i in range(n)], n
        own.append(r)
    chunks = [Chunk([5], [8 + n], [b + 1], [o.slot_list[-1]], [prompt, o], shared_prefix=True)
              for b, (o, n) in enumerate(zip(own, lens))]
    B = len(chunks)
    q, k, v = torch.randn(B, 1, 4, 8, generator=g), torch.randn(B, 1, 2, 8, generator=g), torch.randn(B, 1, 2, 8, generator=g)
    att = PagedCascade.for_chunks(cache.clone(), chunks, torch.device("cpu"))
    if grouping == "grouped":  # else the short prompt is read per row, in the private part: gathered
        assert (not att.in_place) == pool_end
    got = att(0, q, k, v)
    want = _reference(cache, chunks, [prompt.slot_list + o.slot_list for o in own], 0, q, k, v)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("equal_paths", [True, False])
def test_lone_row_reads_its_runs_in_place(equal_paths, monkeypatch):
    """A summary's row over its prompt, three paths in side-by-side blocks (equal or unequal lengths: the
    shorter ones masked) and its own tokens reads each in place (``RunsInPlace``); equal to the reference.
    Paths that are not side by side are gathered (``PagedCascade``)."""
    import torch

    from parathinker.engine.attention import cascade as attention
    from parathinker.engine.attention.cascade import RunsInPlace
    from parathinker.engine.block_manager import Run
    from parathinker.engine.plan import Chunk

    monkeypatch.setattr(attention, "IN_PLACE_MIN_KEYS", 0)
    g = torch.Generator().manual_seed(3)
    cache = torch.randn(2, 2, 4 * 12, 2, 8, generator=g)
    prompt = Run(4, pages=[1, 2], length=7, slot_list=list(range(4, 11)))

    def runs(pages_of):  # noqa: ANN001, ANN202
        out = []
        for b, n in enumerate([6, 6, 6] if equal_paths else [6, 3, 5]):
            r = Run(4, pages=pages_of(b))
            r.slot_list, r.length = [r.slot(i) for i in range(n)], n
            out.append(r)
        return out

    own = Run(4, pages=[9], length=3, slot_list=[36, 37, 38])
    q, k, v = torch.randn(1, 1, 4, 8, generator=g), torch.randn(1, 1, 2, 8, generator=g), torch.randn(1, 1, 2, 8, generator=g)
    for pages_of, kind in ((lambda b: [3 + 2 * b, 4 + 2 * b], RunsInPlace), (lambda b: [3 + b, 6 + b], PagedCascade)):
        reads = [prompt, *runs(pages_of), own]
        chunk = Chunk([5], [20], [0], [38], reads)
        att = PagedCascade.for_chunks(cache.clone(), [chunk], torch.device("cpu"))
        assert type(att) is kind
        want = _reference(cache, [chunk], [[s for r in reads for s in r.slot_list]], 1, q, k, v)
        torch.testing.assert_close(att(1, q, k, v), want, rtol=1e-5, atol=1e-5)


def test_summary_in_place_generates_what_the_reference_does(tiny_llama, monkeypatch):
    """ParaThinker generation whose summary steps read the paths in place (threshold 0) = the reference backend."""
    from parathinker.engine.attention import cascade as attention

    monkeypatch.setattr(attention, "IN_PLACE_MIN_KEYS", 0)
    used = []
    make = attention.RunsInPlace.__init__

    def spy(self, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        used.append(True)
        make(self, *a, **kw)

    monkeypatch.setattr(attention.RunsInPlace, "__init__", spy)
    cas, ref = _pair(tiny_llama)
    pp = ParallelParams(mode="parathinker", num_paths=3, max_path_tokens=12, summary_max_tokens=6)
    sp = SamplingParams(temperature=0.0, ignore_eos=True)
    (a,), (b,) = cas.generate(["what is two plus three ?"], pp, sp, raw=True), ref.generate(["what is two plus three ?"], pp, sp, raw=True)
    assert used
    assert [p.token_ids for p in a.paths] == [p.token_ids for p in b.paths]
    assert a.summary.token_ids == b.summary.token_ids
    assert max(abs(u - v) for u, v in zip(a.summary.logprobs, b.summary.logprobs)) <= 1e-5


@pytest.mark.parametrize("mode", ["majority", "parathinker"])
def test_engine_lays_paths_side_by_side_on_the_cpu(tiny_llama, mode, monkeypatch, grouping):
    """The CPU engine gives a request's paths one block of pages each, side by side: its decode steps read
    the paths' own K/V in place (and generate what the reference backend does, test above)."""
    if grouping != "grouped":
        pytest.skip("this prompt is too short to be read as a group: its keys are gathered per row")
    cas = LLM(tiny_llama, cache=CacheConfig(kv_cache_memory=0.05, page_size=4))
    strided: list[bool] = []
    make = PagedCascade.for_chunks.__func__

    def spy(cls, cache, chunks, device):  # noqa: ANN001, ANN202
        att = make(cls, cache, chunks, device)
        if len(chunks) > 1:
            strided.append(att.in_place)
        return att

    monkeypatch.setattr(PagedCascade, "for_chunks", classmethod(spy))
    pp = ParallelParams(mode=mode, num_paths=3, max_path_tokens=10, summary_max_tokens=4)
    cas.generate(["two plus three ?"], pp, SamplingParams(temperature=0.0, ignore_eos=True))
    assert strided and all(strided)


@pytest.mark.parametrize("attention", ["cascade", pytest.param("triton", marks=pytest.mark.slow)])  # triton: ~1 min
def test_decode_backends_equal_reference_after_page_churn(tiny_qwen2, attention):
    """Many requests of mixed modes and lengths through a small pool: pages are freed and handed out again
    in every order, so prompts and paths land in scattered, recycled pages. Each backend (with the
    mask-free causal prefill, prompts admitted together packed) must still read exactly the keys of the
    reference (explicit masks everywhere): same tokens, log-probs within 1e-5. Triton: the static
    (CUDA-graph-shaped) path, in Triton's interpreter here; tests/gpu runs it compiled."""
    if attention == "triton":
        pytest.importorskip("triton")
    churn_equals_reference(tiny_qwen2, attention, "cpu")


def test_short_prompts_are_read_per_row_long_ones_as_a_group(grouping):
    """The grouping rule: a group saves (rows - 1) x prompt length key reads; groups that save at least
    CASCADE_MIN_GROUP_KEYS are formed if together they save CASCADE_MIN_SAVED_KEYS."""
    import torch

    from parathinker.engine.attention import cascade as attention
    from parathinker.engine.block_manager import PagePool
    from parathinker.engine.plan import Chunk

    pool = PagePool(400, 16)
    pool.admit(0, 399)
    cache = torch.zeros(1, 2, 400 * 16, 2, 8)

    def groups(prompt_len: int, rows: int, requests: int = 1):  # noqa: ANN202
        chunks = []
        for _ in range(requests):
            prompt = pool.new_run()
            pool.extend(prompt, prompt_len, 0)
            own = [pool.new_run() for _ in range(rows)]
            chunks += [Chunk([5], [prompt_len], [0], pool.extend(o, 1, 0), [prompt, o], shared_prefix=True) for o in own]
        return PagedCascade.for_chunks(cache, chunks, torch.device("cpu")).groups

    limit = attention.CASCADE_MIN_SAVED_KEYS
    if grouping == "grouped":
        assert groups(3, 2) is not None
    else:
        per_group = attention.CASCADE_MIN_GROUP_KEYS
        assert (limit, per_group) == (512, 100)
        assert groups(limit // 7 - 1, 8) is None and groups(limit // 7 + 1, 8) is not None
        assert groups(limit // 14 + 1, 8, requests=2) is not None  # the step's savings count, not one group's
        assert groups(per_group // 7 - 1, 8, requests=8) is None  # but each group must save enough on its own
        assert groups(per_group // 7 + 1, 8, requests=8) is not None


def test_cascade_partials_flash_kernel_and_einsum_fallback_agree(grouping, monkeypatch):
    """Both ways of computing a partial (SDPA's CPU flash kernel with its log-sum-exp, or einsums where a torch
    lacks that op) against the reference: requests of different prompt lengths, rows of different lengths."""
    import torch

    from parathinker.engine.attention import cascade as attention
    from parathinker.engine.attention.reference import PagedReference, build_metadata
    from parathinker.engine.block_manager import PagePool
    from parathinker.engine.plan import Chunk

    g = torch.Generator().manual_seed(1)
    pool = PagePool(240, 4)
    pool.admit(0, 239)
    cache = torch.randn(1, 2, 960, 2, 8, generator=g)
    chunks, reads = [], []
    # a group that pays (1200 saved reads), a short one (grouped only when forced; else read per row), a lone row
    for L, P in ((600, 3), (60, 2), (5, 1)):
        prompt = pool.new_run()
        pool.extend(prompt, L, 0)
        for k in range(P):
            own = pool.new_run()
            slots = pool.extend(own, 1 + 3 * k, 0)
            chunks.append(Chunk([5], [L + 3 * k], [0], slots[-1:], [prompt, own], shared_prefix=True))
            reads.append(prompt.slot_list + own.slot_list)
    B = len(chunks)
    q, k, v = torch.randn(B, 1, 4, 8, generator=g), torch.randn(B, 1, 2, 8, generator=g), torch.randn(B, 1, 2, 8, generator=g)
    meta = build_metadata([c.new_slots for c in chunks], reads, [None] * B, torch.device("cpu"))
    want = PagedReference(cache.clone(), meta)(0, q, k, v)
    assert attention._FLASH_CPU is not None  # this torch has the op; the fallback is forced below
    for flash in (attention._FLASH_CPU, None):
        monkeypatch.setattr(attention, "_FLASH_CPU", flash)
        att = PagedCascade.for_chunks(cache.clone(), chunks, torch.device("cpu"))
        assert att.groups is not None and att.groups[2].shape[0] == (2 if grouping == "grouped" else 1)
        torch.testing.assert_close(att(0, q, k, v), want, rtol=1e-5, atol=1e-5)


def test_rows_split_into_buckets_of_similar_length():
    """``split_by_length``: a partition of the rows, each bucket ascending; long rows apart from short ones
    once that saves enough padded key reads; one bucket of every row when no split pays."""
    from parathinker.engine.attention.private import split_by_length

    lengths = [3, 300, 2, 5, 290, 4]
    assert split_by_length(lengths, min_saved=10**9) == [list(range(6))]
    buckets = split_by_length(lengths, min_saved=100)
    assert sorted(b for bucket in buckets for b in bucket) == list(range(6))
    assert all(bucket == sorted(bucket) for bucket in buckets)
    assert [1, 4] in buckets  # the two long rows together, the short ones no longer padded to 300
    assert all(len(bucket) == 1 for bucket in split_by_length(lengths, min_saved=0))  # every split "pays"


def _many_requests_step(seed: int):  # noqa: ANN202
    """One decode step of three requests (path rows of 1..9 own keys over prompts of 40, 5 and 23 keys, each
    request's summary over its prompt and paths), rows interleaved, in pages recycled in a shuffled order."""
    import torch

    from parathinker.engine.block_manager import PagePool
    from parathinker.engine.plan import Chunk

    rng = random.Random(seed)
    pool = PagePool(200, 4)
    pool.admit(0, 199)
    junk = [pool.new_run() for _ in range(40)]
    for r in junk:
        pool.extend(r, rng.randrange(1, 12), 0)
    rng.shuffle(junk)
    for r in junk[:30]:  # free pages go back in a shuffled order: the runs below land scattered
        pool.release(r)
    chunks, reads = [], []
    for L, P in ((40, 4), (5, 3), (23, 2)):
        prompt = pool.new_run()
        pool.extend(prompt, L, 0)
        paths = []
        for _ in range(P):
            own = pool.new_run()
            slots = pool.extend(own, rng.randrange(1, 10), 0)
            chunks.append(Chunk([5], [L], [0], slots[-1:], [prompt, own], shared_prefix=True))
            reads.append(prompt.slot_list + own.slot_list)
            paths.append(own)
        own = pool.new_run()
        slots = pool.extend(own, 2, 0)
        chunks.append(Chunk([5], [L + 9], [0], slots[-1:], [prompt, *paths, own]))
        reads.append([s for r in chunks[-1].reads for s in r.slot_list])
    order = list(range(len(chunks)))
    rng.shuffle(order)
    g = torch.Generator().manual_seed(seed)
    cache = torch.randn(2, 2, 200 * 4, 2, 8, generator=g)
    B = len(chunks)
    qkv = [torch.randn(B, 1, n, 8, generator=g) for n in (4, 2, 2)]
    return cache, [chunks[i] for i in order], [reads[i] for i in order], qkv


@pytest.mark.parametrize("limit", [0, 64, None])
@pytest.mark.parametrize("flash", [True, False])
def test_many_requests_in_one_step_equal_reference(limit, flash, grouping, monkeypatch):
    """Rows of many requests in one step, read in buckets of similar length (``BUCKET_MIN_SAVED_KEYS`` 0: every
    row its own bucket; 64: a few; the default), scattered in recycled pages: what the reference reads, with
    SDPA's CPU flash kernel and with the einsum fallback."""
    import torch

    from parathinker.engine.attention import cascade as attention
    from parathinker.engine.attention import private

    if limit is not None:
        monkeypatch.setattr(private, "BUCKET_MIN_SAVED_KEYS", limit)
    if not flash:
        monkeypatch.setattr(attention, "_FLASH_CPU", None)
    cache, chunks, reads, (q, k, v) = _many_requests_step(5)
    att = PagedCascade.for_chunks(cache.clone(), chunks, torch.device("cpu"))
    if limit is not None:
        assert len(att.parts) > 1
    torch.testing.assert_close(att(1, q, k, v), _reference(cache, chunks, reads, 1, q, k, v), rtol=1e-5, atol=1e-5)


def test_page_churn_with_rows_in_buckets_equals_reference(tiny_qwen2, monkeypatch):
    """The page-churn generation (many requests of every mode through a small pool) with every row of a step
    in its own bucket: the reference's tokens."""
    from parathinker.engine.attention import private

    monkeypatch.setattr(private, "BUCKET_MIN_SAVED_KEYS", 0)
    seen = []
    real = private.split_by_length
    monkeypatch.setattr(private, "split_by_length", lambda lengths: seen.append(len(lengths)) or real(lengths))
    churn_equals_reference(tiny_qwen2, "cascade", "cpu")
    assert max(seen) > 1
