"""CUDA graphs of decode steps: replay vs eager (same static path, no capture) vs the reference backend.

Run with `pytest -m gpu` on a machine with a GPU (benchmarks/device_check.sh does).
"""

from __future__ import annotations

import random

import pytest
import torch

from parathinker import LLM, CacheConfig, DecodeConfig, ParallelParams, SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _llms(ckpt, dtype="float32", **cache):
    base = dict(kv_cache_memory=0.25, **cache)
    return (
        LLM(ckpt, device="cuda", dtype=dtype, cache=CacheConfig(**base), decode=DecodeConfig(attention="triton", cuda_graphs=True)),
        LLM(ckpt, device="cuda", dtype=dtype, cache=CacheConfig(**base), decode=DecodeConfig(attention="triton", cuda_graphs=False)),
        LLM(ckpt, device="cuda", dtype=dtype, cache=CacheConfig(**base), decode=DecodeConfig(attention="reference")),
    )


def _graphs_used(llm):
    dec = llm.engine.runner.decoder
    assert dec.error is None, dec.error
    assert dec.stats["captures"] > 0 and dec.stats["replays"] > 0, dec.stats
    return dec


@pytest.mark.parametrize("num_paths", [1, 3, 8])
def test_graph_scores_equal_eager_and_reference(tiny_qwen2, num_paths):
    """Teacher-forced log-probs (every path/summary token a decode step) in buckets 1, 4, 8 (the fixture has <think1..8>)."""
    graph, eager, ref = _llms(tiny_qwen2)
    rng = random.Random(num_paths)
    prompt = [rng.randrange(4, 50) for _ in range(40)]
    paths = [[rng.randrange(4, 50) for _ in range(rng.randrange(1, 40))] for _ in range(num_paths)]
    summary = [rng.randrange(4, 50) for _ in range(6)]
    g, e, r = (m.score(prompt, paths, summary) for m in (graph, eager, ref))
    ge = max(abs(x - y) for x, y in zip(g.token_logprobs, e.token_logprobs) if x == x)
    gr = max(abs(x - y) for x, y in zip(g.token_logprobs, r.token_logprobs) if x == x)
    assert ge <= 1e-5, ge
    assert gr <= 1e-4, gr
    _graphs_used(graph)


@pytest.mark.parametrize(("mode", "num_paths", "requests"), [("majority", 1, 1), ("majority", 5, 3),
                                                             ("parathinker", 8, 4), ("majority", 8, 32)])
def test_graph_greedy_generation_identical(tiny_qwen2, mode, num_paths, requests):
    """Greedy tokens through graphs == eager == reference; P rows share their request's prompt list."""
    graph, eager, ref = _llms(tiny_qwen2)
    pp = ParallelParams(mode=mode, num_paths=num_paths, max_path_tokens=24, summary_max_tokens=8)
    sp = SamplingParams(temperature=0.0, ignore_eos=True)
    prompts = [f"what is {i % 10} + {i // 10} ?" for i in range(requests)]
    outs = [m.generate(prompts, pp, sp, raw=True) for m in (graph, eager, ref)]
    for a, b, c in zip(*outs):
        assert [p.token_ids for p in a.paths] == [p.token_ids for p in b.paths] == [p.token_ids for p in c.paths]
        if a.summary is not None:
            assert a.summary.token_ids == b.summary.token_ids == c.summary.token_ids
        for p, q in zip(a.paths, c.paths):
            assert max(abs(u - v) for u, v in zip(p.logprobs, q.logprobs)) <= 1e-4
    _graphs_used(graph)


def test_graph_logits_bf16_close_to_reference(tiny_llama):
    """bf16 (the kernel's tensor-core path): graph == eager exactly, close to the reference."""
    graph, eager, ref = _llms(tiny_llama, dtype="bfloat16")
    rng = random.Random(0)
    prompt = [rng.randrange(4, 50) for _ in range(30)]
    paths = [[rng.randrange(4, 50) for _ in range(rng.randrange(5, 30))] for _ in range(6)]
    g, e, r = (m.score(prompt, paths, [5, 6, 7]) for m in (graph, eager, ref))
    assert max(abs(x - y) for x, y in zip(g.token_logprobs, e.token_logprobs) if x == x) <= 1e-3
    assert max(abs(x - y) for x, y in zip(g.token_logprobs, r.token_logprobs) if x == x) <= 0.1
    _graphs_used(graph)


def test_seeded_sampling_with_graphs_is_reproducible(tiny_qwen2):
    """Same seed twice (sampling on the GPU, per-request generators) -> the same tokens; another seed differs."""
    llm = LLM(tiny_qwen2, device="cuda", cache=CacheConfig(kv_cache_memory=0.25), decode=DecodeConfig(cuda_graphs=True))
    pp = ParallelParams(num_paths=4, max_path_tokens=24, summary_max_tokens=8)

    def tokens(seed):
        outs = llm.generate(["what is 1 + 2 ?", "the goal"], pp, SamplingParams(temperature=1.0, seed=seed), raw=True)
        return [[p.token_ids for p in o.paths] + [o.summary.token_ids] for o in outs]

    a, b, c = tokens(1), tokens(1), tokens(2)
    assert a == b
    assert a != c
    # and a request's draws do not depend on its batch neighbours (generate seeds prompt i with seed + i)
    alone = llm.generate(["the goal"], pp, SamplingParams(temperature=1.0, seed=2), raw=True)[0]
    assert [p.token_ids for p in alone.paths] + [alone.summary.token_ids] == a[1]
    _graphs_used(llm)


def test_graph_capture_grows_with_context(tiny_qwen2, monkeypatch):
    """Page tables that must grow mid-run: the bucket is re-captured and stays exact."""
    from parathinker.engine.decode import graphs as graph_runner

    monkeypatch.setattr(graph_runner, "MIN_TOKENS", 16)
    graph, _, ref = _llms(tiny_qwen2, page_size=4)
    pp = ParallelParams(mode="majority", num_paths=4, max_path_tokens=60)
    sp = SamplingParams(temperature=0.0, ignore_eos=True)
    a, c = graph.generate(["the goal"], pp, sp, raw=True)[0], ref.generate(["the goal"], pp, sp, raw=True)[0]
    assert [p.token_ids for p in a.paths] == [p.token_ids for p in c.paths]
    assert _graphs_used(graph).stats["captures"] >= 2
