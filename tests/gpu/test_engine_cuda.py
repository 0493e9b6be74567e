"""The engine on a CUDA device against the CPU oracle (run with `pytest -m gpu`, on a machine with a GPU)."""

from __future__ import annotations

import random

import pytest
import torch

from parathinker import LLM, CacheConfig, ParallelParams, SamplingParams

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
