"""Generation behaviour: termination policies, forced control tokens, seeds, prefill-once, page return."""

from __future__ import annotations

import pytest
import torch

from parathinker import LLM, CacheConfig, ParallelParams, SamplingParams
from parathinker.engine.engine import Engine
from parathinker.engine.sequence import RequestSpec
from parathinker.model import ModelConfig
from parathinker.tokens import ControlTokens, control_token_strings

CACHE = CacheConfig(kv_cache_memory=0.05)
VOCAB = {t: 10 + i for i, t in enumerate(control_token_strings(8))}  # ids 10..27
CT = ControlTokens.from_vocab(VOCAB, eos_ids=[2])
WORD = 5


class ScriptedModel(torch.nn.Module):
    """A stand-in model whose path with think index i emits its end token after ``ends[i]`` body tokens.

    Hidden state = (position, segment); the "logits" read them back. It never calls attention, so
    it tests the engine's control flow alone; the real model's numerics are tested elsewhere.
    """

    def __init__(self, cfg: ModelConfig, prompt_len: int, ends: dict[int, int], end_token=None, summary_len=3):
        super().__init__()
        self.config, self.L, self.ends, self.summary_len = cfg, prompt_len, ends, summary_len
        self.end_token = end_token or (lambda i: CT.think_close[i - 1])
        self.w = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self):
        return torch.device("cpu")

    @property
    def dtype(self):
        return torch.float32

    def hidden(self, ids, pos, seg, attn):
        return torch.stack([pos.float(), seg.float()], -1)

    def logits(self, h):
        out = torch.full((*h.shape[:-1], 40), -10.0)
        for idx in torch.cartesian_prod(*[torch.arange(n) for n in h.shape[:-1]]).reshape(-1, h.dim() - 1):
            pos, seg = (int(x) for x in h[tuple(idx)])
            t = pos - self.L  # t = 0 is <think i>; body token j is at t = j + 1
            if seg > 0:
                tok = self.end_token(seg) if t >= self.ends.get(seg, 10**9) else WORD
            else:
                tok = CT.summary_close if t >= self.summary_len + 100 else WORD
            out[tuple(idx)][tok] = 10.0
        return out


def _engine(tiny_qwen2, ends, **kw):
    cfg = ModelConfig.from_dir(tiny_qwen2)
    return Engine(ScriptedModel(cfg, 4, ends, **kw), CT, (2,), CACHE)


def _run(engine, pp):
    spec = RequestSpec([1, 1, 1, 1], pp, SamplingParams(temperature=0.0), [])
    (req,) = engine.run([spec])
    return req


ENDS = {1: 9, 2: 3, 3: 6, 4: 12}  # body lengths at which each path would end


@pytest.mark.parametrize(
    ("termination", "stop_at"), [("first", 3), ("half", 6), ("last", 12), ("3", 9)]
)
def test_termination_policies_stop_at_the_right_step(tiny_qwen2, termination, stop_at):
    req = _run(_engine(tiny_qwen2, ENDS), ParallelParams(num_paths=4, termination=termination, max_path_tokens=50))
    for s in req.seqs:
        natural = ENDS[s.index]
        if natural <= stop_at:
            assert s.finish_reason == "end" and len(s.body) == natural
        else:
            # cut where it stood: the token sampled in the finishing step is dropped, own </think i> appended
            assert s.finish_reason == "cut" and len(s.body) == stop_at
        assert s.num_cached == len(s.body) + 2  # <think i> + body + </think i> all went through the model once
    # the summary starts at L + longest path, the layout's rule
    assert req.summary is not None and req.summary.finished


def test_budget_cuts_a_path(tiny_qwen2):
    req = _run(_engine(tiny_qwen2, ENDS), ParallelParams(num_paths=4, termination="last", max_path_tokens=4))
    reasons = {s.index: s.finish_reason for s in req.seqs}
    assert reasons == {1: "length", 2: "end", 3: "length", 4: "length"}
    assert all(len(s.body) <= 4 for s in req.seqs)


def test_eos_and_other_paths_end_tokens_close_a_path_as_its_own(tiny_qwen2):
    # path i's model emits EOS instead of </think i>: the path still closes with its own </think i>
    eng = _engine(tiny_qwen2, ENDS, end_token=lambda i: 2)
    req = _run(eng, ParallelParams(num_paths=4, termination="last", max_path_tokens=50))
    assert all(s.finish_reason == "end" for s in req.seqs)
    # </think 3> is banned inside path 1: the scripted model wants it, so path 1 never ends by itself
    eng = _engine(tiny_qwen2, ENDS, end_token=lambda i: CT.think_close[2] if i == 1 else CT.think_close[i - 1])
    req = _run(eng, ParallelParams(num_paths=4, termination="last", max_path_tokens=20))
    assert {s.index: s.finish_reason for s in req.seqs}[1] == "length"


def test_control_tokens_never_sampled_inside_paths(tiny_qwen2):
    llm = LLM(tiny_qwen2, cache=CACHE)
    # make every control token hugely likely: the bans must still hold
    with torch.no_grad():
        llm.model.lm_head.weight[list(llm.control.all_ids)] *= 0
        llm.model.lm_head.weight[list(llm.control.all_ids)] += 0.0
        bias = torch.zeros(llm.model.config.vocab_size)
        bias[list(llm.control.all_ids)] = 50.0
    dec = llm.engine.runner.decoder
    orig = dec.logits  # every forward's logits: the decode backend's LM head (the fused step's included)
    dec.logits = lambda h: orig(h) + bias
    pp = ParallelParams(num_paths=4, termination="last", max_path_tokens=8, summary_max_tokens=8, summary_prefix="")
    out = llm.generate(["what is"], pp, SamplingParams(temperature=1.0, seed=0), raw=True)[0]
    controls = set(llm.control.all_ids)
    for p in out.paths:
        assert not controls & set(p.token_ids)
        # its own </think i> is the only control token it may emit, and it ends the path at once
        assert p.finish_reason == "end" and p.num_tokens == 0
    assert out.summary.finish_reason == "end"


def test_seed_reproduces_and_differs(tiny_qwen2):
    llm = LLM(tiny_qwen2, cache=CACHE)
    pp = ParallelParams(num_paths=3, max_path_tokens=12, summary_max_tokens=5)
    a = llm.generate(["what is 1 + 2 ?"], pp, SamplingParams(temperature=1.0, seed=4), raw=True)[0]
    b = llm.generate(["what is 1 + 2 ?"], pp, SamplingParams(temperature=1.0, seed=4), raw=True)[0]
    c = llm.generate(["what is 1 + 2 ?"], pp, SamplingParams(temperature=1.0, seed=5), raw=True)[0]
    assert [p.token_ids for p in a.paths] == [p.token_ids for p in b.paths]
    assert a.summary.token_ids == b.summary.token_ids
    assert [p.token_ids for p in a.paths] != [p.token_ids for p in c.paths]
    # the paths of one request differ from each other (independent samples)
    assert len({tuple(p.token_ids) for p in a.paths}) > 1


def test_prompt_prefilled_once_and_pages_returned(tiny_llama):
    llm = LLM(tiny_llama, cache=CACHE)
    pool = llm.engine.pool
    free = pool.num_free
    pp = ParallelParams(num_paths=6, max_path_tokens=10, summary_max_tokens=4)
    outs = llm.generate(["try a path from node 1 to node 2", "what"], pp, SamplingParams(temperature=1.0, seed=1),
                        raw=True)
    for o in outs:
        assert o.stats["prefill_tokens"] == len(o.prompt_token_ids)
        assert o.stats["path_tokens"] == sum(p.num_tokens + 2 for p in o.paths)
        prefix = len(llm.tokenizer.encode(o.summary.prefix, add_special_tokens=False))
        assert o.stats["summary_tokens"] == 1 + prefix + o.summary.num_tokens - (o.summary.finish_reason == "length")
    assert pool.num_free == free and pool.num_unreserved == free


def test_majority_and_sequential_modes_need_no_control_tokens(tiny_qwen2):
    llm = LLM(tiny_qwen2, cache=CACHE)
    llm.engine.control = None  # as for a plain base model
    out = llm.generate(["what is"], ParallelParams(mode="majority", num_paths=5, max_path_tokens=6),
                       SamplingParams(temperature=1.0, seed=2), raw=True)[0]
    assert len(out.paths) == 5 and out.summary is None
    assert out.stats["prefill_tokens"] == len(out.prompt_token_ids)
    seq = llm.generate(["what is"], ParallelParams(mode="sequential", num_paths=5, max_path_tokens=6),
                       SamplingParams(temperature=0.0), raw=True)[0]
    assert len(seq.paths) == 1


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("fail_at", [0, 1, 4, 9])  # 0: the prompts' prefill
def test_an_error_mid_run_gives_every_page_back(tiny_qwen2, fail_at, overlap):
    """A forward that raises (or an interrupt) during prefill or decoding: the error propagates, every page
    and reservation is returned, and the same engine then runs the same requests as a fresh one would."""
    llm = LLM(tiny_qwen2, cache=CacheConfig(num_pages=40, page_size=4))
    eng = llm.engine
    eng.overlap = overlap
    free, unreserved = eng.pool.num_free, eng.pool.num_unreserved
    pp = ParallelParams(num_paths=3, max_path_tokens=6, summary_max_tokens=3)
    specs = [RequestSpec([5 + i, 6, 7], pp, SamplingParams(temperature=1.0, seed=i), []) for i in range(4)]
    forward, calls = eng.runner.forward, [0]

    def failing(*a, **k):  # noqa: ANN002, ANN003, ANN202
        calls[0] += 1
        if calls[0] == fail_at:
            raise KeyboardInterrupt
        return forward(*a, **k)

    prefill = eng.runner.prefill
    if fail_at:
        eng.runner.forward = failing
    else:
        eng.runner.prefill = lambda chunks: (_ for _ in ()).throw(KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        eng.run(specs)
    assert calls[0] == fail_at
    assert (eng.pool.num_free, eng.pool.num_unreserved) == (free, unreserved) and eng.draws.inflight is None
    eng.runner.forward, eng.runner.prefill = forward, prefill
    again = [[s.body for s in r.seqs] + [r.summary.body] for r in eng.run(specs)]
    fresh = LLM(tiny_qwen2, cache=CacheConfig(num_pages=40, page_size=4)).engine
    assert again == [[s.body for s in r.seqs] + [r.summary.body] for r in fresh.run(specs)]
    assert eng.pool.num_free == free
