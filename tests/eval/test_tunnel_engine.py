"""Tunnel vision with the real engine and a word-level tokenizer (the bundled sequential model).

The continuation must be the formatted prompt's token ids followed by the source path's first L
token ids: joining texts would glue the prompt's last word to the path's first ("42T1" -> <unk>).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from parathinker import LLM
from parathinker.assets import SEQUENTIAL_MODEL
from parathinker.eval.benchmarks import pathfind_default
from parathinker.eval.runlog import read_records
from parathinker.eval.settings import EvalSettings, RunPlan
from parathinker.eval.tunnel import run_tunnel_vision, tunnel_curve


class Recording:
    """The real LLM, remembering every batch of prompts it was given."""

    def __init__(self, llm: LLM):
        self.llm, self.tokenizer, self.batches = llm, llm.tokenizer, []

    def format_prompt(self, q: str) -> str:
        return self.llm.format_prompt(q)

    def encode_prompt(self, q: str) -> list[int]:
        return self.llm.encode_prompt(q)

    def generate(self, prompts: list[Any], pp: Any, sp: Any, **kw: Any) -> list[Any]:
        self.batches.append(list(prompts))
        return self.llm.generate(prompts, pp, sp, **kw)


def test_continuations_are_prompt_ids_plus_path_ids(tmp_path: Path) -> None:
    llm = Recording(LLM(SEQUENTIAL_MODEL, threads=1))
    problems = pathfind_default(1000)[:24]
    settings = EvalSettings(model=str(SEQUENTIAL_MODEL), temperature=1.0, top_p=1.0, seed=3, max_path_tokens=128)
    plan = RunPlan(benchmarks=("pathfind",), methods=("sequential",), batch_size=24, tunnel_prefixes=(4, 8))
    run_tunnel_vision(llm, {"pathfind": problems}, plan, settings, tmp_path, progress=False)
    recs = read_records(tmp_path / "tunnel.jsonl")
    wrong = {r["id"]: r for r in recs if r["kind"] == "source" and not r["correct"]}
    assert wrong
    unk = llm.tokenizer.unk_token_id
    conts = [p for batch in llm.batches[1:] for p in batch]
    assert conts and all(isinstance(p, list) and unk not in p for p in conts)
    by_prompt = {tuple(llm.encode_prompt(q.problem)): q.id for q in problems}
    for ids in conts:
        head = next(k for k in by_prompt if tuple(ids[: len(k)]) == k)
        path = llm.tokenizer.encode(wrong[by_prompt[head]]["text"], add_special_tokens=False)
        n = len(ids) - len(head)
        assert n in (0, 4, 8) and ids[len(head):] == path[:n]
    curve = {c["prefix_tokens"]: c for c in tunnel_curve(recs)}
    assert curve[0]["n"] == len(wrong)  # a fresh sample per wrong source
