"""The torch cascade decode backend (the CPU default) against the reference backend.

The cascade reads a request's shared prompt once for all its paths and merges that partial
softmax with each row's private keys by log-sum-exp; the reference gathers every key of every row
and masks. Same logits up to float rounding, so greedy generations are identical.
"""

from __future__ import annotations

import random

import pytest

from parathinker import LLM, CacheConfig, ParallelParams, SamplingParams


def _pair(ckpt):  # noqa: ANN001
    return [LLM(ckpt, cache=CacheConfig(kv_cache_memory=0.05, page_size=4, attention=a)) for a in ("cascade", "reference")]


def test_cascade_is_the_cpu_default(tiny_qwen2):
    assert LLM(tiny_qwen2, cache=CacheConfig(kv_cache_memory=0.05)).engine.runner.decode_backend == "cascade"


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
