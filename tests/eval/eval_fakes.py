"""A deterministic fake of the engine's ``LLM`` (the contract of ``parathinker.LLM.generate``).

Each path is right with probability ``p_correct`` (more with more paths for the summary, as a
real ParaThinker would), decided by a hash of (prompt, seed, path), so outputs depend only on
the request, never on batching or call order. Raw prompts that end with a forced prefix are
right less often the longer the prefix (a toy tunnel vision).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

USER, ASSISTANT = "<|user|>", "<|assistant|><think>\n"


@dataclass
class FakePath:
    text: str
    num_tokens: int
    finish_reason: str = "end"


@dataclass
class FakeSummary:
    text: str
    num_tokens: int


@dataclass
class FakeOutput:
    answer: str | None
    paths: list[FakePath]
    summary: FakeSummary | None
    stats: dict[str, Any] = field(default_factory=dict)


def _u01(*parts: object) -> float:
    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


class FakeLLM:
    """``generate(prompts, pp, sp, raw=False)`` over a table problem text -> gold answer."""

    def __init__(self, golds: dict[str, str], p_correct: float = 0.5, fail_after: int | None = None) -> None:
        self.golds = golds
        self.p_correct = p_correct
        self.fail_after = fail_after  # raise KeyboardInterrupt on this call (simulates a kill)
        self.calls: list[tuple[int, str, int | None, int]] = []  # (n prompts, mode, seed, paths)

    def format_prompt(self, question: str) -> str:
        return f"{USER}{question}{ASSISTANT}"

    def _path(self, prompt: str, gold: str, seed: int | None, i: int, p: float, budget: int) -> FakePath:
        right = _u01(prompt, seed, i) < p
        ans = gold if right else f"{gold}1"  # a wrong answer that never equals the gold
        words = 20 + int(40 * _u01("len", prompt, seed, i))
        body = " ".join(f"step{k}" for k in range(words))
        if words > budget:
            return FakePath(" ".join(f"step{k}" for k in range(budget)), budget, "length")
        return FakePath(f"{body} so \\boxed{{{ans}}}", words + 3)

    def generate(self, prompts: list[str], pp: Any, sp: Any, raw: bool = False) -> list[FakeOutput]:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("fake kill")
        self.calls.append((len(prompts), pp.mode, sp.seed, pp.num_paths))
        outs = []
        for prompt in prompts:
            p = self.p_correct
            if raw:  # a forced prefix after the chat prompt: longer prefix, more tunnel vision
                question, prefix = prompt[len(USER):].split(ASSISTANT, 1)
                p = self.p_correct / (1 + len(prefix.split()) / 20)
            else:
                question = prompt
            gold = self.golds[question]
            n = 1 if pp.mode == "sequential" else pp.num_paths
            paths = [self._path(prompt, gold, sp.seed, i, p, pp.max_path_tokens) for i in range(n)]
            summary = None
            answer = paths[0].text.rsplit("\\boxed{", 1)[-1][:-1] if paths[0].finish_reason == "end" else None
            if pp.mode in ("parathinker", "reprefill"):
                right = _u01("sum", prompt, sp.seed) < min(0.95, p + 0.1 * n)
                answer = gold if right else f"{gold}1"
                summary = FakeSummary(f" the answer: \\boxed{{{answer}}}", 8)
            elif pp.mode == "majority":
                answer = None  # the harness must vote itself
            stats = {"prefill_tokens": len(prompt.split()), "path_tokens": sum(x.num_tokens for x in paths),
                     "time_total": 0.01 * n}
            outs.append(FakeOutput(answer, paths, summary, stats))
        return outs
