"""The engine's log-probs against stock transformers and against an independent brute force."""

from __future__ import annotations

import random

import pytest
import torch
from reference import PROMPT, packed_by_hand, reference_logprobs

from parathinker import LLM, CacheConfig, ParallelParams, SamplingParams
from parathinker.layout import IGNORE_INDEX

CACHE = CacheConfig(kv_cache_memory=0.05)


def _words(rng: random.Random, n: int, vocab: int = 50) -> list[int]:
    return [rng.randrange(4, vocab) for _ in range(n)]


def _hf_logprobs(ckpt, ids, positions, visible, impl):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32, attn_implementation=impl).eval()
    mask = torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)[None, None]
    with torch.no_grad():
        out = hf(torch.tensor([ids]), attention_mask=mask, position_ids=torch.tensor([positions]))
    return torch.log_softmax(out.logits[0].float(), -1)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_score_equals_transformers_when_thought_embeddings_are_zero(tiny_zero_seg, impl):
    """Qwen2ForCausalLM / LlamaForCausalLM given the same tokens, positions and two-phase 4D mask."""
    llm = LLM(tiny_zero_seg, cache=CACHE)
    rng = random.Random(0)
    prompt, paths, summary = _words(rng, 7), [_words(rng, n) for n in (5, 9, 2)], _words(rng, 6)
    sc = llm.score(prompt, paths, summary)
    p = sc.packed
    ref = _hf_logprobs(tiny_zero_seg, p.input_ids, p.positions, p.visibility(), impl)
    diffs = [abs(ref[k, lab].item() - sc.token_logprobs[k]) for k, lab in enumerate(p.labels) if lab != IGNORE_INDEX]
    assert len(diffs) == sum(len(x) + 1 for x in paths) + len(summary) + 1
    assert max(diffs) <= 1e-4


def test_sequential_generation_logprobs_equal_transformers(tiny_zero_seg):
    """Plain decoding through the paged cache: each sampled token's log-prob equals HF on the full text."""
    llm = LLM(tiny_zero_seg, cache=CACHE)
    prompt = [5, 9, 13, 21, 8]
    out = llm.generate([llm.tokenizer.decode(prompt)], ParallelParams(mode="sequential", max_path_tokens=24),
                       SamplingParams(temperature=1.0, seed=3), raw=True)[0]
    ids = out.prompt_token_ids + out.paths[0].token_ids
    T = len(ids)
    ref = _hf_logprobs(tiny_zero_seg, ids, list(range(T)), torch.ones(T, T, dtype=torch.bool).tril(), "sdpa")
    L = len(out.prompt_token_ids)
    want = [ref[L - 1 + j, t].item() for j, t in enumerate(out.paths[0].token_ids)]
    assert out.paths[0].num_tokens > 0
    assert max(abs(a - b) for a, b in zip(want, out.paths[0].logprobs)) <= 1e-4


@pytest.mark.parametrize("num_paths", [1, 3, 8])
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_score_equals_brute_force_with_thought_embeddings(arch, num_paths, tiny_qwen2, tiny_llama):
    ckpt = tiny_qwen2 if arch == "qwen2" else tiny_llama
    llm = LLM(ckpt, cache=CACHE)
    c = llm.control
    rng = random.Random(num_paths)
    prompt = _words(rng, 6)
    paths = [_words(rng, rng.randrange(1, 12)) for _ in range(num_paths)]  # unequal lengths
    summary = _words(rng, 5)
    sc = llm.score(prompt, paths, summary)
    ids, pos, seg, kinds = packed_by_hand(prompt, paths, summary, c.think_open, c.think_close, c.summary_open,
                                          c.summary_close)
    assert (ids, pos, seg) == (sc.packed.input_ids, sc.packed.positions, sc.packed.segment_ids)
    ref = reference_logprobs(ckpt, ids, pos, seg, kinds)
    checked = 0
    for k, lab in enumerate(sc.packed.labels):
        if lab != IGNORE_INDEX:
            assert abs(ref[k, lab].item() - sc.token_logprobs[k]) <= 1e-4, k
            checked += 1
    assert checked == sum(len(p) + 1 for p in paths) + len(summary) + 1
    # the prompt was prefilled once; every path token and summary token went through the model once
    assert sc.stats["prefill_tokens"] == len(prompt)
    assert sc.stats["path_tokens"] == sum(len(p) + 2 for p in paths)
    assert sc.stats["summary_tokens"] == len(summary) + 1
    assert kinds[0] == PROMPT


def test_reprefill_summary_equals_kv_reuse(tiny_qwen2):
    llm = LLM(tiny_qwen2, cache=CACHE)
    rng = random.Random(11)
    prompt, paths, summary = _words(rng, 5), [_words(rng, n) for n in (3, 8, 5, 1)], _words(rng, 7)
    reuse = llm.score(prompt, paths, summary)
    re = llm.score(prompt, paths, summary, ParallelParams(mode="reprefill"))
    assert max(abs(a - b) for a, b in zip(reuse.summary_logprobs, re.summary_logprobs)) <= 1e-4
    assert re.stats["reprefill_tokens"] == len(prompt) + sum(len(p) + 2 for p in paths) + 1
    assert reuse.stats["reprefill_tokens"] == 0


def _assert_generated_logprobs(o, ref: torch.Tensor) -> None:
    """Each sampled path/summary token's recorded log-prob equals the brute force over the packed output."""
    k = len(o.prompt_token_ids)
    for p in o.paths:
        for j, t in enumerate(p.token_ids):
            assert abs(ref[k + j, t].item() - p.logprobs[j]) <= 1e-4
        k += p.num_tokens + 2
    for j, t in enumerate(o.summary.token_ids):
        assert abs(ref[k + j, t].item() - o.summary.logprobs[j]) <= 1e-4


def test_generation_logprobs_match_brute_force_for_concurrent_requests(tiny_llama):
    """Several requests decode together; each one's sampled tokens score the same as alone, by brute force."""
    llm = LLM(tiny_llama, cache=CACHE)
    c = llm.control
    pp = ParallelParams(num_paths=3, termination="last", max_path_tokens=10, summary_max_tokens=6, summary_prefix="")
    prompts = ["what is 1 + 2 ?", "the goal is", "try a path from node 3 to node 4 ."]
    outs = llm.generate(prompts, pp, SamplingParams(temperature=1.0, seed=7), raw=True)
    for o in outs:
        bodies = [p.token_ids for p in o.paths]
        ids, pos, seg, kinds = packed_by_hand(o.prompt_token_ids, bodies, o.summary.token_ids, c.think_open,
                                              c.think_close, c.summary_open, c.summary_close)
        _assert_generated_logprobs(o, reference_logprobs(tiny_llama, ids, pos, seg, kinds))


def test_path_independence(tiny_qwen2):
    """Changing one path's tokens never changes another path's log-probs (only the summary's)."""
    llm = LLM(tiny_qwen2, cache=CACHE)
    rng = random.Random(5)
    prompt, paths, summary = _words(rng, 5), [_words(rng, 6) for _ in range(4)], _words(rng, 4)
    a = llm.score(prompt, paths, summary)
    changed = [list(p) for p in paths]
    changed[2] = _words(rng, 9)
    b = llm.score(prompt, changed, summary)
    for i in (0, 1, 3):
        assert a.path_logprobs[i] == pytest.approx(b.path_logprobs[i], abs=1e-6)
    assert max(abs(x - y) for x, y in zip(a.summary_logprobs, b.summary_logprobs)) > 1e-4


@pytest.mark.parametrize("termination", ["first", "last"])
def test_flat_positions_generation_matches_brute_force(tiny_qwen2, termination):
    """Ablation layout: path k at L + k*stride + t, summary at L + P*stride (stride = budget + 2)."""
    llm = LLM(tiny_qwen2, cache=CACHE)
    c = llm.control
    budget = 7
    pp = ParallelParams(num_paths=3, termination=termination, max_path_tokens=budget, summary_max_tokens=5,
                        summary_prefix="", flat_positions=True)
    o = llm.generate(["what is 1 + 2 ?"], pp, SamplingParams(temperature=1.0, seed=2), raw=True)[0]
    ids, _, seg, kinds = packed_by_hand(o.prompt_token_ids, [p.token_ids for p in o.paths], o.summary.token_ids,
                                        c.think_open, c.think_close, c.summary_open, c.summary_close)
    L, stride = len(o.prompt_token_ids), budget + 2
    pos = list(range(L))
    for k, p in enumerate(o.paths):
        pos += [L + k * stride + t for t in range(p.num_tokens + 2)]
    pos += [L + 3 * stride + t for t in range(o.summary.num_tokens + 2)]
    _assert_generated_logprobs(o, reference_logprobs(tiny_qwen2, ids, pos, seg, kinds))
    # the trainer packs the ablation with the same stride when told the inference budget
    from parathinker.layout import LayoutConfig, pack

    packed = pack(o.prompt_token_ids, [p.token_ids for p in o.paths], o.summary.token_ids, c,
                  config=LayoutConfig(flat_positions=True, flat_stride=stride))
    assert packed.positions == pos


def test_reprefill_with_flat_positions_equals_kv_reuse(tiny_qwen2):
    llm = LLM(tiny_qwen2, cache=CACHE)
    rng = random.Random(12)
    prompt, paths, summary = _words(rng, 5), [_words(rng, n) for n in (2, 6, 4)], _words(rng, 5)
    flat = ParallelParams(flat_positions=True, flat_stride=12)
    reuse = llm.score(prompt, paths, summary, flat)
    re = llm.score(prompt, paths, summary, ParallelParams(mode="reprefill", flat_positions=True, flat_stride=12))
    assert max(abs(a - b) for a, b in zip(reuse.summary_logprobs, re.summary_logprobs)) <= 1e-4
    assert reuse.packed.positions[-1] == len(prompt) + 3 * 12 + len(summary) + 1
