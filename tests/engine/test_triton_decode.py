"""The Triton decode kernel (run by Triton's CPU interpreter here) against plain attention."""

from __future__ import annotations

import os
import random

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")  # CPU: interpret the kernel; on CUDA this is unset by the user
triton = pytest.importorskip("triton")

from parathinker.engine.attention.triton import build_lists, decode_attention, row_entry_table  # noqa: E402
from parathinker.engine.block_manager import PagePool  # noqa: E402


def _reference(q, k_cache, v_cache, reads):
    R, H, D = q.shape
    G = H // k_cache.shape[1]
    out = torch.zeros(R, H, D)
    for r, slots in enumerate(reads):
        if not slots:
            continue  # a row that reads nothing (padding): zeros
        idx = torch.tensor(slots)
        k = k_cache[idx].repeat_interleave(G, 1)  # (S, H, D)
        v = v_cache[idx].repeat_interleave(G, 1)
        att = torch.softmax(torch.einsum("hd,shd->hs", q[r], k) / D**0.5, -1)
        out[r] = torch.einsum("hs,shd->hd", att, v)
    return out


def _runs(pool, lengths, rng):
    """Runs of the given lengths, filled in an interleaved order so their pages are scattered."""
    runs = [pool.new_run() for _ in lengths]
    left = list(lengths)
    while any(left):
        i = rng.choice([k for k, n in enumerate(left) if n])
        n = min(left[i], rng.randrange(1, 6))
        pool.extend(runs[i], n, 0)
        left[i] -= n
    return runs


@pytest.mark.parametrize(
    ("kv_heads", "heads", "page_size", "splits"), [(2, 4, 4, 8), (1, 3, 1, 2), (2, 2, 16, 1), (2, 6, 3, 16)]
)
def test_cascade_page_lists_equal_plain_attention(kv_heads, heads, page_size, splits):
    if torch.cuda.is_available():
        pytest.skip("interpreter test; the GPU test runs the compiled kernel")
    rng = random.Random(kv_heads * 10 + heads + page_size)
    torch.manual_seed(0)
    D = 16
    pool = PagePool(400 // page_size + 8, page_size)
    pool.admit(0, pool.usable_pages)
    # request A: prompt of 70 tokens shared by 3 paths (last page partly filled unless page_size divides);
    # request B: prompt 5 read by its one path (a private list); a summary row reading A's prompt and paths;
    # row 6 is padding: it reads nothing
    prompt_a, own0, own1, own2, prompt_b, own3, own4, own5 = _runs(pool, [70, 9, 1, 40, 5, 3, 4, 2], rng)
    slots = pool.num_pages * page_size
    k_cache, v_cache = torch.randn(slots, kv_heads, D), torch.randn(slots, kv_heads, D)
    shared = [(prompt_a.pages, prompt_a.length, [0, 1, 2, 5])]
    single = [(r.pages, r.length, [row]) for r, row in
              [(own0, 0), (own1, 1), (own2, 2), (prompt_b, 3), (own3, 3), (prompt_a, 4), (own0, 4), (own1, 4),
               (own2, 4), (own4, 4), (own5, 5)]]
    single.append(([], 0, []))  # an unused list slot (capacity): no work, no rows
    reads = [prompt_a.slot_list + own0.slot_list, prompt_a.slot_list + own1.slot_list,
             prompt_a.slot_list + own2.slot_list, prompt_b.slot_list + own3.slot_list,
             prompt_a.slot_list + own0.slot_list + own1.slot_list + own2.slot_list + own4.slot_list,
             prompt_a.slot_list + own5.slot_list, []]
    q = torch.randn(len(reads), heads, D)
    classes = [build_lists(shared, "cpu", splits), build_lists(single, "cpu", max(1, splits // 2))]
    out = decode_attention(q, k_cache, v_cache, classes, row_entry_table(classes, len(reads), "cpu"), page_size)
    ref = _reference(q, k_cache, v_cache, reads)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()


@pytest.mark.slow  # Triton's interpreter: ~25 s (test_graph_runner's smoke test runs the path by default)
def test_engine_with_triton_decode_equals_reference(tiny_qwen2):
    """Scoring runs every path and summary token as a decode step: the kernel backend must match."""
    if torch.cuda.is_available():
        pytest.skip("interpreter test")
    from parathinker import LLM, CacheConfig, DecodeConfig, ParallelParams, SamplingParams

    ref = LLM(tiny_qwen2, cache=CacheConfig(kv_cache_memory=0.05), decode=DecodeConfig(attention="reference"))
    tri = LLM(tiny_qwen2, cache=CacheConfig(kv_cache_memory=0.05), decode=DecodeConfig(attention="triton"))
    rng = random.Random(3)
    prompt = [rng.randrange(4, 50) for _ in range(11)]
    paths = [[rng.randrange(4, 50) for _ in range(n)] for n in (3, 7, 1, 5)]
    summary = [rng.randrange(4, 50) for _ in range(4)]
    a, b = ref.score(prompt, paths, summary), tri.score(prompt, paths, summary)
    diffs = [abs(x - y) for x, y in zip(a.token_logprobs, b.token_logprobs) if x == x]
    assert max(diffs) <= 1e-4
    # greedy generation with several requests in one batch: identical tokens
    pp = ParallelParams(num_paths=3, max_path_tokens=6, summary_max_tokens=3)
    sp = SamplingParams(temperature=0.0)
    ga = ref.generate(["what is 1 + 2 ?", "the goal"], pp, sp, raw=True)
    gb = tri.generate(["what is 1 + 2 ?", "the goal"], pp, sp, raw=True)
    for x, y in zip(ga, gb):
        assert [p.token_ids for p in x.paths] == [p.token_ids for p in y.paths]
        assert x.summary.token_ids == y.summary.token_ids
