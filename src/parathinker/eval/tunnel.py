"""The tunnel-vision experiment: continue sequentially from prefixes of the model's own wrong paths.

1. ``source``: ``samples`` sequential runs per problem (seeds as in the runner), text kept.
2. ``continue``: for every wrong source path longer than L tokens and each L in 0 + the prefix
   lengths (100..1600 by default), the prompt's token ids + the path's first L tokens are sent
   as ids (with an LLM that has no tokenizer: ``format_prompt(question)`` + the text cut, raw)
   and decoded sequentially (budget ``max_path_tokens - L``)
   with a seed of its own (``continuation_seed``: never the source's, or L = 0 would replay the
   wrong path); the continuation's own final answer is graded.
The curve: accuracy of the continuations per L. At L = 0 (an empty prefix) that is a fresh sample
on the problems the model got wrong once; the paper's finding: it falls as L grows.

Cutting at L tokens uses ``llm.tokenizer`` when the LLM has one; otherwise the path's text is cut
at the same fraction of characters (L / num_tokens of the path). Joining texts would be wrong for
word-level tokenizers: "... to 42" + "T1 46" reads "42T1".
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .benchmarks import Problem
from .grading import extract_answer
from .runlog import AppendLog, Record
from .runner import GenerateLLM, preflight, seed_for, select_problems
from .settings import EvalSettings, RunPlan, check_run_settings

TUNNEL_LOG = "tunnel.jsonl"


CONTINUATION_SEED_OFFSET = 1_000_000_007  # continuation seeds live far from every source seed


def record_kind(rec: Record) -> str:
    """``source`` (a fresh sequential run) or ``continuation`` (decoded from a source's prefix)."""
    return str(rec.get("kind") or ("source" if int(rec["prefix_tokens"]) == 0 else "continuation"))


def tunnel_key(rec: Record) -> Hashable:
    """Identity of a tunnel record: problem, source sample, prefix length, kind."""
    return (rec["benchmark"], str(rec["id"]), int(rec["sample"]), int(rec["prefix_tokens"]), record_kind(rec))


def continuation_seed(source_seed: int) -> int:
    return source_seed + CONTINUATION_SEED_OFFSET


def cut_prefix(text: str, num_tokens: int, n: int, tokenizer: Any = None) -> str:
    """The first ``n`` tokens of ``text`` (a path of ``num_tokens`` tokens); see module doc."""
    if tokenizer is not None and hasattr(tokenizer, "encode") and hasattr(tokenizer, "decode"):
        ids = tokenizer.encode(text, add_special_tokens=False)
        return tokenizer.decode(ids[:n])
    if num_tokens <= 0:
        return ""
    return text[: round(len(text) * min(1.0, n / num_tokens))]


def _source_record(pr: Problem, s: int, seed: int, out: Any, wall: float) -> Record:
    path = out.paths[0]
    ex = extract_answer(path.text)
    return {"benchmark": pr.benchmark, "id": pr.id, "sample": s, "prefix_tokens": 0, "kind": "source", "seed": seed,
            "gold": pr.answer, "answer": ex.answer, "correct": pr.check(ex.answer),
            "num_tokens": int(path.num_tokens), "finish": path.finish_reason, "text": path.text,
            "wall_time": wall}


def run_tunnel_vision(
    llm: GenerateLLM, problems: dict[str, list[Problem]], plan: RunPlan, settings: EvalSettings,
    out_dir: str | Path, progress: bool = True,
) -> int:
    """Run (or resume) the experiment into ``out_dir/tunnel.jsonl``; return the number of new records."""
    out = Path(out_dir)
    preflight(llm, problems, dataclasses.replace(plan, methods=("sequential",), vote=0), settings)
    check_run_settings(out, settings)
    mine = [p for b in plan.benchmarks for p in select_problems(problems[b], plan.limit, plan.shard)]
    name = TUNNEL_LOG if plan.shard[1] == 1 else f"tunnel.shard{plan.shard[0]}of{plan.shard[1]}.jsonl"
    new = 0
    with AppendLog(out / name, tunnel_key) as log:
        new += _sources(llm, mine, plan, settings, log, progress)
        new += _continuations(llm, mine, plan, settings, log, progress)
    return new


def _sources(llm: GenerateLLM, mine: Sequence[Problem], plan: RunPlan, settings: EvalSettings,
             log: AppendLog, progress: bool) -> int:
    pp = settings.parallel("sequential", 1)
    todo = [(s, pr) for s in range(plan.samples) for pr in mine
            if (pr.benchmark, pr.id, s, 0, "source") not in log.done]
    for s0 in tqdm(range(0, len(todo), plan.batch_size), desc="tunnel: source paths", disable=None if progress else True):
        chunk = todo[s0 : s0 + plan.batch_size]
        for s in sorted({s for s, _ in chunk}):
            prs = [pr for t, pr in chunk if t == s]
            t0 = time.perf_counter()
            seed = seed_for(settings.seed, s)
            outs = llm.generate([settings.prompt(pr.problem) for pr in prs], pp, settings.sampling(seed))
            wall = time.perf_counter() - t0
            for pr, o in zip(prs, outs):
                log.append(_source_record(pr, s, seed, o, wall))
    return len(todo)


def _continuations(llm: GenerateLLM, mine: Sequence[Problem], plan: RunPlan, settings: EvalSettings,
                   log: AppendLog, progress: bool) -> int:
    by_key = {(pr.benchmark, pr.id): pr for pr in mine}
    tok = getattr(llm, "tokenizer", None)
    jobs: dict[int, list[tuple[Problem, Record]]] = defaultdict(list)
    lengths = sorted({0, *plan.tunnel_prefixes})
    for src in [r for r in log.records if record_kind(r) == "source" and not r["correct"]]:
        pr = by_key.get((src["benchmark"], str(src["id"])))
        for n in lengths:
            key = (src["benchmark"], str(src["id"]), src["sample"], n, "continuation")
            if pr is not None and (n == 0 or src["num_tokens"] > n) and key not in log.done:
                jobs[n].append((pr, src))
    total = sum(len(v) for v in jobs.values())
    bar = tqdm(total=total, desc="tunnel: continuations", disable=None if progress else True)
    for n, items in sorted(jobs.items()):
        pp = settings.parallel("sequential", 1)
        pp.max_path_tokens = max(1, pp.max_path_tokens - n)
        for k in range(0, len(items), plan.batch_size):
            chunk = items[k : k + plan.batch_size]
            for src_seed in sorted({src["seed"] for _, src in chunk}):
                part = [(pr, src) for pr, src in chunk if src["seed"] == src_seed]
                seed = continuation_seed(src_seed)
                t0 = time.perf_counter()
                if tok is not None and hasattr(llm, "encode_prompt"):  # token ids: no text boundary to get wrong
                    ids = [llm.encode_prompt(settings.prompt(pr.problem))
                           + list(tok.encode(src["text"], add_special_tokens=False))[:n] for pr, src in part]
                    outs = llm.generate(ids, pp, settings.sampling(seed))
                else:
                    prompts = [llm.format_prompt(settings.prompt(pr.problem))  # type: ignore[attr-defined]
                               + cut_prefix(src["text"], src["num_tokens"], n, tok) for pr, src in part]
                    outs = llm.generate(prompts, pp, settings.sampling(seed), raw=True)
                wall = time.perf_counter() - t0
                for (pr, src), o in zip(part, outs):
                    path = o.paths[0]
                    ex = extract_answer(path.text)
                    log.append({"benchmark": pr.benchmark, "id": pr.id, "sample": src["sample"],
                                "prefix_tokens": n, "kind": "continuation", "seed": seed, "gold": pr.answer,
                                "answer": ex.answer,
                                "correct": pr.check(ex.answer),
                                "num_tokens": int(path.num_tokens), "finish": path.finish_reason,
                                "wall_time": wall})
                bar.update(len(part))
    bar.close()
    return total


def tunnel_curve(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Accuracy (percent) and count of the continuations per prefix length (L = 0: fresh samples)."""
    groups: dict[int, list[bool]] = defaultdict(list)
    for r in records:
        if record_kind(r) == "continuation":
            groups[int(r["prefix_tokens"])].append(bool(r["correct"]))
    return [{"prefix_tokens": n, "accuracy": 100.0 * sum(v) / len(v), "n": len(v)} for n, v in sorted(groups.items())]
