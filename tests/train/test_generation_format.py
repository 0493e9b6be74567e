"""A model trained by `train` on a memorisable toy task generates in the ParaThinker format.

Greedy, P = 3 paths, every path must run to its end (termination "last"): each path ends
because the model emits an end token ("end", not the budget), and the token it puts there is
its own ``</think i>``, not EOS or a plain ``</think>`` (the greedy choice under the engine's
bans, recomputed with a dense forward over the generated sequence); the summary ends with
``</summary>`` the same way and its last ``\\boxed{}`` is the right answer.

Measured (100 steps, 4 problems, think indices drawn from 1..8): all paths "end" with their own
close token under the bans, every summary closed and right; without the bans the own
``</think i>`` gets only ~0.1-0.2 of the mass at a path's end (the rest on other ``</think j>``:
this small run has not yet learnt which index to close), which is why the engine's bans matter.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from parathinker.layout import attention_bias
from parathinker.train.collate import PackConfig
from parathinker.train.config import TrainConfig
from parathinker.train.trainer import train

from .conftest import write_jsonl

NUM = {"two": 2, "three": 3, "four": 4, "five": 5}
PROBLEMS = [("two", "three"), ("four", "five"), ("three", "three"), ("five", "two")]


def _records() -> list[dict]:
    out = []
    for a, b in PROBLEMS:
        s = NUM[a] + NUM[b]
        out.append({
            "id": f"{a}-{b}",
            "prompt": f"what is {a} plus {b}",
            "paths": [f"first {a} then {b} so {s}"] * 3,  # one phrasing: memorisable by a tiny model in few steps
            "summary": f"so the answer is \\boxed{{{s}}}",
            "answer": str(s),
        })
    return out


@pytest.fixture(scope="module")
def toy_model(prepared_qwen, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("genfmt")
    data = write_jsonl(root / "toy.jsonl", _records())
    cfg = TrainConfig(max_steps=100, global_batch_size=4, per_device_batch_size=4, learning_rate=5e-3, warmup_ratio=0.05,
                      epochs=0, gradient_checkpointing=False, logging_steps=10, save_steps=1000, seed=0)
    return train(prepared_qwen, data, root / "run", cfg, PackConfig(max_length=512))


@pytest.mark.slow  # ~60 s on 2 shared cores (100 training steps + generation)
def test_generations_follow_the_format(toy_model):
    from parathinker.engine.llm import LLM
    from parathinker.params import ParallelParams, SamplingParams

    llm = LLM(str(toy_model), device="cpu", dtype=torch.float32)
    pp = ParallelParams(num_paths=3, termination="last", max_path_tokens=40, summary_max_tokens=40, summary_prefix="")
    c = llm.control
    outs = llm.generate([f"what is {a} plus {b}" for a, b in PROBLEMS], pp, SamplingParams(temperature=0.0))
    for (a, b), out in zip(PROBLEMS, outs):
        s = NUM[a] + NUM[b]
        shown = [(p.text, p.finish_reason) for p in out.paths], (out.summary.text, out.summary.finish_reason)
        assert [p.finish_reason for p in out.paths] == ["end"] * 3, shown
        assert all(p.token_ids for p in out.paths), shown
        assert out.summary is not None and out.summary.finish_reason == "end", shown
        assert out.answer == str(s), shown
        # which end token: rerun the generated sequence through the model; at each path's end the
        # greedy choice under the engine's bans must be that path's own </think i> (not EOS or a
        # plain </think>), at the summary's end </summary> (not EOS)
        scored = llm.score(out.prompt_token_ids, [p.token_ids for p in out.paths], out.summary.token_ids, pp)
        packed = scored.packed
        ends = [e - 2 for _, e in packed.path_spans] + [packed.summary_span[1] - 2]
        want = [c.think_close[i - 1] for i in packed.think_indices] + [c.summary_close]
        banned = [c.banned_in_path(i) for i in packed.think_indices] + [c.banned_in_summary()]
        assert [packed.labels[k] for k in ends] == want
        with torch.no_grad():
            logits = llm.model(torch.tensor([packed.input_ids]), torch.tensor([packed.positions]),
                               torch.tensor([packed.segment_ids]), attention_bias(packed.visibility())[None, None])[0]
        picked = []
        for k, ban in zip(ends, banned):
            row = logits[k].clone()
            row[list(ban)] = float("-inf")
            picked.append(int(row.argmax()))
        probs = [math.exp(scored.token_logprobs[k]) for k in ends]
        print(f"{a}+{b}: paths {[p.text for p in out.paths]} | summary {out.summary.text!r} | "
              f"own end-token probs (no bans) " + " ".join(f"{p:.2f}" for p in probs))
        assert picked == want, (picked, want, shown)
