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

from parathinker import LLM, CacheConfig, ParallelParams, SamplingParams  # noqa: E402
from parathinker.engine import sampler  # noqa: E402
from parathinker.engine.sequence import RequestSpec  # noqa: E402


def _specs() -> list[RequestSpec]:
    """Requests of every mode decoding together: ends, spent budgets, cuts, a re-prefill summary, the ablations."""
    sp = [SamplingParams(temperature=1.0, top_p=0.9, seed=1), SamplingParams(temperature=1.2, seed=2),
          SamplingParams(temperature=0.8, top_k=5, seed=3), SamplingParams(temperature=0.0),
          SamplingParams(temperature=1.0, top_p=0.95, seed=5), SamplingParams(temperature=0.9, seed=6)]
    pps = [ParallelParams(num_paths=3, max_path_tokens=9, summary_max_tokens=5, termination="first"),
           ParallelParams(num_paths=4, max_path_tokens=6, summary_max_tokens=4, termination="last"),
           ParallelParams(mode="majority", num_paths=3, max_path_tokens=7),
           ParallelParams(mode="sequential", max_path_tokens=5),
           ParallelParams(mode="reprefill", num_paths=2, max_path_tokens=5, summary_max_tokens=4, termination="half"),
           ParallelParams(num_paths=3, max_path_tokens=7, summary_max_tokens=3, termination="2", flat_positions=True,
                          thought_embeddings=False)]  # the ablations: positions from the stride, segment ids 0
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13, 14], [15, 16, 17, 18], [19, 20, 21], [22, 23]]
    return [RequestSpec(p, pp, s, [30, 31]) for p, pp, s in zip(prompts, pps, sp)]


def _outcome(reqs) -> list:  # noqa: ANN001
    out = []
    for r in reqs:
        seqs = [*r.seqs, *([r.summary] if r.summary else [])]
        out.append(([(s.kind, s.body, s.finish_reason) for s in seqs],
                    {k: v for k, v in r.stats.items() if k.endswith("_tokens")}))
    return out


def _logprobs(reqs) -> list[float]:  # noqa: ANN001
    return [lp for r in reqs for s in [*r.seqs, *([r.summary] if r.summary else [])] for lp in s.logprobs]


def _run(llm: LLM, overlap: bool, which: slice = slice(None)):  # noqa: ANN202
    eng = llm.engine
    eng.overlap = overlap
    free = eng.pool.num_free
    reqs = eng.run(_specs()[which])
    assert eng._inflight is None and eng.pool.num_free == free  # nothing left in flight, every page returned
    return reqs


# the static (CUDA-graph) decode path in Triton's interpreter is slow: two of the requests there
@pytest.mark.parametrize(("attention", "which"), [("cascade", slice(None)), ("reference", slice(None)),
                                                  ("triton", slice(0, 3, 2))])
def test_overlap_gives_the_synchronous_tokens(tiny_qwen2, attention, which):
    llm = LLM(tiny_qwen2, cache=CacheConfig(kv_cache_memory=0.05, page_size=4, attention=attention))
    sync = _run(llm, False, which)
    over = _run(llm, True, which)
    assert _outcome(over) == _outcome(sync)
    a, b = _logprobs(over), _logprobs(sync)
    assert len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) <= 1e-5
    reasons = {s.finish_reason for r in sync for s in r.seqs}
    assert {"end", "length", "cut"} <= reasons  # rows are rolled back for every reason a row stops


def test_overlap_discards_a_step_whose_fed_token_was_redrawn(tiny_qwen2, monkeypatch):
    """A window of 2 candidates makes top-p rows be redrawn exactly: the step that fed the old token is re-run."""
    monkeypatch.setattr(sampler, "CANDIDATES", 2)
    llm = LLM(tiny_qwen2, cache=CacheConfig(kv_cache_memory=0.05, page_size=4))
    sync = _run(llm, False)
    assert llm.engine.redrawn_rows > 0 and llm.engine.discarded_steps == 0
    over = _run(llm, True)
    assert llm.engine.discarded_steps > 0
    assert _outcome(over) == _outcome(sync)
    a, b = _logprobs(over), _logprobs(sync)
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-5


def test_overlap_is_for_cuda_only_by_default(tiny_qwen2):
    assert CacheConfig().overlap and not LLM(tiny_qwen2, cache=CacheConfig(kv_cache_memory=0.05)).engine.overlap


def test_overlap_with_requests_admitted_mid_run(tiny_qwen2):
    """A pool too small for all requests: the last is admitted (and prefilled) while other rows are in flight."""
    llm = LLM(tiny_qwen2, cache=CacheConfig(num_pages=46, page_size=4))  # the 5th fits once the 4th is done
    eng = llm.engine
    specs = _specs()
    assert sum(eng.check(s) for s in specs) > eng.pool.usable_pages  # they cannot all start together
    admitted = []
    orig = eng._prefill

    def spy(reqs):  # noqa: ANN001, ANN202
        admitted.append((len(reqs), eng._inflight is not None))
        return orig(reqs)

    eng._prefill = spy
    sync = _run(llm, False)
    assert len(admitted) > 1
    admitted.clear()
    over = _run(llm, True)
    assert any(flying for _, flying in admitted), admitted  # some prompts were prefilled with draws in flight
    assert _outcome(over) == _outcome(sync)
    a, b = _logprobs(over), _logprobs(sync)
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-5
