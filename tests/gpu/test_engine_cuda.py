"""The engine on a CUDA device against the CPU oracle (run with `pytest -m gpu`, on a machine with a GPU)."""

from __future__ import annotations

import random

import pytest
import torch
from scenarios import churn_equals_reference, logprobs, outcome, run_mixed

from parathinker import LLM, CacheConfig, DecodeConfig, ParallelParams, SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CACHE = CacheConfig(kv_cache_memory=0.25)


def _example(seed: int, num_paths: int):
    rng = random.Random(seed)
    words = lambda n: [rng.randrange(4, 50) for _ in range(n)]  # noqa: E731
    return words(9), [words(rng.randrange(1, 20)) for _ in range(num_paths)], words(6)


@pytest.mark.parametrize("num_paths", [1, 3, 8])
def test_cuda_fp32_score_equals_cpu(tiny_qwen2, num_paths):
    cpu = LLM(tiny_qwen2, device="cpu", cache=CACHE)
    gpu = LLM(tiny_qwen2, device="cuda", dtype="float32", cache=CACHE)
    prompt, paths, summary = _example(num_paths, num_paths)
    a, b = cpu.score(prompt, paths, summary), gpu.score(prompt, paths, summary)
    diffs = [abs(x - y) for x, y in zip(a.token_logprobs, b.token_logprobs) if x == x]
    assert max(diffs) <= 1e-4


def test_cuda_bf16_close_to_fp32(tiny_llama):
    cpu = LLM(tiny_llama, device="cpu", cache=CACHE)
    gpu = LLM(tiny_llama, device="cuda", dtype="bfloat16", cache=CACHE)
    prompt, paths, summary = _example(0, 4)
    a, b = cpu.score(prompt, paths, summary), gpu.score(prompt, paths, summary)
    diffs = [abs(x - y) for x, y in zip(a.token_logprobs, b.token_logprobs) if x == x]
    assert max(diffs) <= 0.1


def test_cuda_generation_runs_and_returns_pages(tiny_qwen2):
    llm = LLM(tiny_qwen2, device="cuda", cache=CACHE)
    free = llm.engine.pool.num_free
    pp = ParallelParams(num_paths=8, max_path_tokens=32, summary_max_tokens=8)
    outs = llm.generate(["what is 1 + 2 ?"] * 4, pp, SamplingParams(temperature=1.0, seed=0), raw=True)
    assert all(len(o.paths) == 8 and o.summary is not None for o in outs)
    assert all(o.stats["prefill_tokens"] == len(o.prompt_token_ids) for o in outs)
    assert llm.engine.pool.num_free == free


def test_triton_decode_kernel_compiled_matches_reference():
    """The compiled kernel at a realistic shape (Qwen2.5-1.5B heads), bf16 cache, page tables, cascade lists."""
    from parathinker.engine.attention.triton import build_lists, decode_attention, row_entry_table
    from parathinker.engine.block_manager import PagePool

    torch.manual_seed(0)
    H, KVH, D, P, L, ps = 12, 2, 128, 16, 2048, 16
    pool = PagePool((L + P * 300) // ps + 64, ps)
    pool.admit(0, pool.usable_pages)
    prompt = pool.new_run()
    pool.extend(prompt, L - 5, 0)  # a partly filled last page
    owns = []
    for i in range(P):
        owns.append(pool.new_run())
        pool.extend(owns[-1], 17 * (i + 1), 0)
    slots = pool.num_pages * ps
    k = torch.randn(slots, KVH, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(slots, KVH, D, device="cuda", dtype=torch.bfloat16)
    classes = [build_lists([(prompt.pages, prompt.length, list(range(P)))], "cuda", splits=32),
               build_lists([(r.pages, r.length, [i]) for i, r in enumerate(owns)], "cuda", splits=8)]
    q = torch.randn(P, H, D, device="cuda", dtype=torch.bfloat16)
    out = decode_attention(q, k, v, classes, row_entry_table(classes, P, "cuda"), ps)
    for r in range(P):
        idx = torch.tensor(prompt.slot_list + owns[r].slot_list, device="cuda")
        kk = k[idx].float().repeat_interleave(H // KVH, 1)
        vv = v[idx].float().repeat_interleave(H // KVH, 1)
        att = torch.softmax(torch.einsum("hd,shd->hs", q[r].float(), kk) / D**0.5, -1)
        ref = torch.einsum("hs,shd->hd", att, vv)
        assert torch.allclose(out[r].float(), ref, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize(("dtype", "tol"), [("float32", 1e-4), ("bfloat16", 0.1)])
@pytest.mark.parametrize("mode", ["parathinker", "reprefill"])
def test_cuda_causal_prefill_equals_masked_reference(tiny_qwen2, dtype, tol, mode):
    """PagedCausal on CUDA (flash / memory-efficient causal kernels, GQA heads expanded for the
    bottom-right variant) == the masked reference: prompts, forced path chunks, re-prefill segments."""

    llm = LLM(tiny_qwen2, device="cuda", dtype=dtype, cache=CacheConfig(kv_cache_memory=0.25))
    rng = random.Random(7)
    prompt = [rng.randrange(4, 50) for _ in range(70)]
    paths = [[rng.randrange(4, 50) for _ in range(rng.randrange(20, 60))] for _ in range(4)]
    pp = ParallelParams(num_paths=4, mode=mode)
    fast = llm.score(prompt, paths, [5, 6, 7], pp, path_logprobs=False).token_logprobs
    llm = LLM(tiny_qwen2, device="cuda", dtype=dtype, cache=CacheConfig(kv_cache_memory=0.25),
              decode=DecodeConfig(reference_prefill=True))
    ref = llm.score(prompt, paths, [5, 6, 7], pp, path_logprobs=False).token_logprobs
    diff = max(abs(a - b) for a, b in zip(fast, ref) if a == a)
    assert diff <= tol, diff


@pytest.mark.parametrize("graphs", [True, False])
def test_cuda_overlap_gives_the_synchronous_tokens(tiny_qwen2, graphs):
    """Overlapped decoding (the CUDA default) vs the synchronous loop, with CUDA graphs on and off: same tokens."""
    llm = LLM(tiny_qwen2, device="cuda", dtype="float32", cache=CacheConfig(kv_cache_memory=0.25), decode=DecodeConfig(cuda_graphs=graphs))
    assert llm.engine.overlap  # on by default here
    sync = run_mixed(llm, False)
    over = run_mixed(llm, True)
    assert outcome(over) == outcome(sync)
    a, b = logprobs(over), logprobs(sync)
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-4
    dec = llm.engine.runner.decoder
    assert dec is not None and dec.error is None and (dec.stats["replays"] > 0) == graphs


def test_cuda_triton_equals_reference_after_page_churn(tiny_qwen2):
    """Recycled, scattered pages (12 mixed requests through a 48-page pool): compiled Triton path vs reference."""
    churn_equals_reference(tiny_qwen2, "triton", "cuda", tol=1e-4)  # split-K vs SDPA reductions on the GPU
