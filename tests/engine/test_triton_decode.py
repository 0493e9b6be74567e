"""The Triton decode kernel (run by Triton's CPU interpreter here) against plain attention."""

from __future__ import annotations

import os
import random

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")  # CPU: interpret the kernel; on CUDA this is unset by the user
triton = pytest.importorskip("triton")

from parathinker.engine.triton_decode import DecodeLists, decode_attention  # noqa: E402


def _reference(q, k_cache, v_cache, reads):
    R, H, D = q.shape
    G = H // k_cache.shape[1]
    out = torch.zeros(R, H, D)
    for r, slots in enumerate(reads):
        idx = torch.tensor(slots)
        k = k_cache[idx].repeat_interleave(G, 1)  # (S, H, D)
        v = v_cache[idx].repeat_interleave(G, 1)
        att = torch.softmax(torch.einsum("hd,shd->hs", q[r], k) / D**0.5, -1)
        out[r] = torch.einsum("hs,shd->hd", att, v)
    return out


@pytest.mark.parametrize(("kv_heads", "heads", "split"), [(2, 4, 512), (1, 3, 32), (2, 2, 64)])
def test_cascade_lists_equal_plain_attention(kv_heads, heads, split):
    if torch.cuda.is_available():
        pytest.skip("interpreter test; the GPU test runs the compiled kernel")
    rng = random.Random(kv_heads * 10 + heads)
    torch.manual_seed(0)
    D, slots = 16, 600
    k_cache, v_cache = torch.randn(slots, kv_heads, D), torch.randn(slots, kv_heads, D)
    perm = list(range(1, slots))
    rng.shuffle(perm)  # scattered slots, like pages of a pool
    take = iter(perm)
    # request A: prompt of 70 tokens shared by 3 paths; request B: 1 path, prompt 5 (no sharing);
    # a summary row reading everything of A; a path with an empty private part
    prompt_a = [next(take) for _ in range(70)]
    private = [[next(take) for _ in range(n)] for n in (9, 1, 40)]
    prompt_b = [next(take) for _ in range(5)]
    private.append(prompt_b + [next(take) for _ in range(3)])
    private.append(prompt_a + private[0] + private[1] + private[2] + [next(take) for _ in range(4)])
    private.append([])
    shared = [(prompt_a, [0, 1, 2, 5])]
    reads = [prompt_a + private[0], prompt_a + private[1], prompt_a + private[2], private[3], private[4],
             prompt_a]
    q = torch.randn(len(private), heads, D)
    lists = DecodeLists.build(private, shared, "cpu")
    out = decode_attention(q, k_cache, v_cache, lists, split=split)
    ref = _reference(q, k_cache, v_cache, reads)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()


def test_engine_with_triton_decode_equals_reference(tiny_qwen2):
    """Scoring runs every path and summary token as a decode step: the kernel backend must match."""
    if torch.cuda.is_available():
        pytest.skip("interpreter test")
    from parathinker import LLM, CacheConfig, ParallelParams, SamplingParams

    ref = LLM(tiny_qwen2, cache=CacheConfig(kv_cache_memory=0.05, attention="reference"))
    tri = LLM(tiny_qwen2, cache=CacheConfig(kv_cache_memory=0.05, attention="triton"))
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
