"""Engine scenarios shared by the CPU tests and their GPU twins (tests/gpu): builders and comparisons."""

from __future__ import annotations

import random

from parathinker import LLM, CacheConfig, DecodeConfig, ParallelParams, SamplingParams
from parathinker.engine.sequence import Request, RequestSpec, Seq


def all_seqs(req: Request) -> list[Seq]:
    """A request's paths (or samples), then its summary if it has one."""
    return [*req.seqs, *([req.summary] if req.summary else [])]


def mixed_specs() -> list[RequestSpec]:
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


def outcome(reqs) -> list:  # noqa: ANN001
    """Per request: each sequence's kind, tokens and finish reason, and the token counts."""
    out = []
    for r in reqs:
        out.append(([(s.role, s.body, s.finish_reason) for s in all_seqs(r)],
                    {k: v for k, v in r.stats.items() if k.endswith("_tokens")}))
    return out


def logprobs(reqs) -> list[float]:  # noqa: ANN001
    return [lp for r in reqs for s in all_seqs(r) for lp in s.logprobs]


def run_mixed(llm: LLM, overlap: bool, which: slice = slice(None)):  # noqa: ANN202
    """``mixed_specs()[which]`` with overlapped decoding on or off; nothing left in flight, every page back."""
    eng = llm.engine
    eng.overlap = overlap
    free = eng.pool.num_free
    reqs = eng.run(mixed_specs()[which])
    assert eng.draws.inflight is None and eng.pool.num_free == free  # nothing left in flight, every page returned
    return reqs


def churn_equals_reference(ckpt, attention: str, device: str, tol: float = 1e-5) -> None:  # noqa: ANN001
    """Twelve mixed requests through a 48-page pool (pages freed and handed out again in every order):
    ``attention`` (mask-free causal prefill) gives the reference's tokens (explicit masks everywhere)."""
    rng = random.Random(7)
    modes = ["parathinker", "majority", "sequential", "reprefill"]
    specs = []
    for i in range(12):
        mode = modes[i % 4]
        pp = ParallelParams(mode=mode, num_paths=1 if mode == "sequential" else rng.randrange(2, 5),
                            max_path_tokens=rng.randrange(3, 12), summary_max_tokens=rng.randrange(2, 6),
                            termination=rng.choice(["first", "half", "last"]))
        sp = SamplingParams(temperature=rng.choice([0.0, 1.0]), seed=i, top_p=rng.choice([1.0, 0.9]))
        specs.append(RequestSpec([rng.randrange(4, 50) for _ in range(rng.randrange(1, 23))], pp, sp, [30]))
    runs = []
    for att in (attention, "reference"):
        # the oracle: explicit masks for prefill chunks too
        decode = DecodeConfig(attention=att, reference_prefill=att == "reference")
        llm = LLM(ckpt, device=device, dtype="float32", cache=CacheConfig(num_pages=48, page_size=4), decode=decode)
        reqs = llm.engine.run(specs)
        runs.append([(s.body, s.logprobs) for r in reqs for s in all_seqs(r)])
        assert llm.engine.pool.num_free == 47
    (got, ref) = runs
    assert [b for b, _ in got] == [b for b, _ in ref]
    assert max(abs(x - y) for (_, a), (_, b) in zip(got, ref) for x, y in zip(a, b)) <= tol
