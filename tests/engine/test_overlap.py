"""Overlapped decoding (step n+1 launched before the host reads step n's tokens) gives the synchronous loop's tokens.

The overlap exists for CUDA, where the host's bookkeeping then runs while the GPU computes; its
control flow (tokens fed on the device, rows rolled back when their drawn token ended them or was cut,
steps discarded when an exact redraw changed a fed token) is the same on the CPU, where it is tested
here against the synchronous loop, with every decode attention backend.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")

from scenarios import logprobs, mixed_specs, outcome, run_mixed  # noqa: E402

from parathinker import LLM, CacheConfig, DecodeConfig  # noqa: E402
from parathinker.engine import sampler  # noqa: E402


# the static (CUDA-graph) decode path in Triton's interpreter is slow: two of the requests there
@pytest.mark.parametrize(("attention", "which"), [
    ("cascade", slice(None)), ("reference", slice(None)),
    pytest.param("triton", slice(0, 3, 2), marks=pytest.mark.slow),  # Triton's interpreter: ~25 s
])
def test_overlap_gives_the_synchronous_tokens(tiny_qwen2, attention, which):
    llm = LLM(tiny_qwen2, cache=CacheConfig(kv_cache_memory=0.05, page_size=4), decode=DecodeConfig(attention=attention))
    sync = run_mixed(llm, False, which)
    over = run_mixed(llm, True, which)
    assert outcome(over) == outcome(sync)
    a, b = logprobs(over), logprobs(sync)
    assert len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) <= 1e-5
    reasons = {s.finish_reason for r in sync for s in r.seqs}
    assert {"end", "length", "cut"} <= reasons  # rows are rolled back for every reason a row stops


def test_overlap_discards_a_step_whose_fed_token_was_redrawn(tiny_qwen2, monkeypatch):
    """A window of 2 candidates makes top-p rows be redrawn exactly: the step that fed the old token is re-run."""
    monkeypatch.setattr(sampler, "CANDIDATES", 2)
    llm = LLM(tiny_qwen2, cache=CacheConfig(kv_cache_memory=0.05, page_size=4))
    sync = run_mixed(llm, False)
    assert llm.engine.redrawn_rows > 0 and llm.engine.discarded_steps == 0
    over = run_mixed(llm, True)
    assert llm.engine.discarded_steps > 0
    assert outcome(over) == outcome(sync)
    a, b = logprobs(over), logprobs(sync)
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-5


def test_overlap_is_for_cuda_only_by_default(tiny_qwen2):
    assert DecodeConfig().overlap and not LLM(tiny_qwen2, cache=CacheConfig(kv_cache_memory=0.05)).engine.overlap


def test_overlap_with_requests_admitted_midrun_mixed(tiny_qwen2):
    """A pool too small for all requests: the last is admitted (and prefilled) while other rows are in flight."""
    llm = LLM(tiny_qwen2, cache=CacheConfig(num_pages=46, page_size=4))  # the 5th fits once the 4th is done
    eng = llm.engine
    eng.prefill_thread = False  # the synchronous run prefills mid-run prompts in the step too (what the spy sees)
    specs = mixed_specs()
    assert sum(eng.check(s) for s in specs) > eng.pool.usable_pages  # they cannot all start together
    admitted = []
    orig = eng._prefill

    def spy(reqs, many):  # noqa: ANN001, ANN202
        if reqs:
            admitted.append((len(reqs), eng.draws.inflight is not None))
        return orig(reqs, many)

    eng._prefill = spy
    sync = run_mixed(llm, False)
    assert len(admitted) > 1
    admitted.clear()
    over = run_mixed(llm, True)
    assert any(flying for _, flying in admitted), admitted  # some prompts were prefilled with draws in flight
    assert outcome(over) == outcome(sync)
    a, b = logprobs(over), logprobs(sync)
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-5
