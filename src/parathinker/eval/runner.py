"""Run benchmarks x methods x P x samples through any LLM with the engine's ``generate``.

Seeds: sample s of a row uses seed ``settings.seed + s * SEED_STRIDE``; run j of a voted
sample s uses ``settings.seed + (s * k + j) * SEED_STRIDE``. Calls batch several problems of one
(row, sample) together, so they share SamplingParams; the engine gives the i-th prompt of a call
seed + i (logged as ``batch_index``), and the stride keeps those from colliding across samples.
Batches are fixed chunks of the problem list, so a resumed run rebuilds the same batches and
the same seeds. Each finished sample is appended to the log at once.

Which text is graded: the summary for parathinker/reprefill (falling back to the engine's
``answer`` if the summary has no box), the single path for sequential, and for majority the
answers extracted from every path, voted here (``grading.majority_vote``), so every method
is graded by the same code.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from ..errors import ParaThinkerError, TokenizerError
from ..params import ParallelParams, SamplingParams
from .benchmarks import Problem
from .grading import Extraction, extract_answer, majority_vote
from .runlog import AppendLog, Record, read_logs
from .settings import EvalSettings, RunPlan, check_run_settings, check_termination

SEED_STRIDE = 10007  # > any batch size (RunPlan enforces it)


def seed_for(base: int, sample: int, run: int = 0, runs: int = 1) -> int:
    """Seed of run ``run`` (of ``runs`` voted runs) of sample ``sample``."""
    return base + (sample * runs + run) * SEED_STRIDE


class GenerateLLM(Protocol):
    """Anything with the engine's ``generate`` (the real ``parathinker.LLM`` or a test fake)."""

    def generate(self, prompts: list[str], pp: ParallelParams, sp: SamplingParams, **kw: Any) -> list[Any]: ...


def sample_key(rec: Record) -> Hashable:
    """Identity of one sample record in the log."""
    return (rec["benchmark"], str(rec["id"]), rec["method"], int(rec["paths"]), int(rec["sample"]))


def select_problems(problems: Sequence[Problem], limit: int | None, shard: tuple[int, int]) -> list[Problem]:
    """The first ``limit`` problems, then every n-th from offset i (shard i/n owns whole problems)."""
    chosen = list(problems[:limit] if limit else problems)
    i, n = shard
    return [p for k, p in enumerate(chosen) if k % n == i]


def graded_answer(method: str, out: Any) -> tuple[Extraction, list[str | None]]:
    """The answer graded for one engine output of ``method``, and each path's own answer."""
    paths = list(getattr(out, "paths", None) or [])
    path_answers = [extract_answer(getattr(p, "text", "")).answer for p in paths]
    base = method.split("+", 1)[0]
    if base == "majority":
        return Extraction(majority_vote(path_answers).answer, "vote"), path_answers
    if base in ("parathinker", "reprefill"):
        summary = getattr(out, "summary", None)
        ex = extract_answer(getattr(summary, "text", None) if summary is not None else None)
        engine = getattr(out, "answer", None)
        if ex.source != "boxed" and engine:
            ex = Extraction(str(engine), "engine")
        return ex, path_answers
    ex = extract_answer(getattr(paths[0], "text", "") if paths else None)
    return ex, path_answers


def _usage(out: Any, wall: float) -> dict[str, Any]:
    paths = list(getattr(out, "paths", None) or [])
    summary = getattr(out, "summary", None)
    stats = dict(getattr(out, "stats", None) or {})
    path_tokens = [int(getattr(p, "num_tokens", 0)) for p in paths]
    summary_tokens = int(getattr(summary, "num_tokens", 0)) if summary is not None else 0
    return {
        "path_tokens": path_tokens,
        "path_finish": [getattr(p, "finish_reason", None) for p in paths],
        "summary_tokens": summary_tokens,
        "total_tokens": sum(path_tokens) + summary_tokens,
        "latency": float(stats.get("time_total", wall)),
        "stats": {k: v for k, v in stats.items() if isinstance(v, (int, float, str))},
    }


def make_record(
    problem: Problem, method: str, num_paths: int, sample: int, seeds: list[int],
    outs: list[Any], walls: list[float], batch: int, save_text: bool = False, batch_index: int = 0,
) -> Record:
    """One log record for ``problem`` from its output(s): one, or k for a voted row."""
    graded = [graded_answer(method, o) for o in outs]
    usages = [_usage(o, w) for o, w in zip(outs, walls)]
    if len(outs) == 1:
        ex, path_answers = graded[0]
        answer, source, run_answers = ex.answer, ex.source, None
    else:  # k voted runs: the runs' answers are voted, costs add up
        run_answers = [g[0].answer for g in graded]
        answer, source = majority_vote(run_answers).answer, "vote"
        path_answers = [a for g in graded for a in g[1]]
    rec: Record = {
        "benchmark": problem.benchmark, "id": problem.id, "method": method, "paths": num_paths,
        "sample": sample, "seed": seeds[0] if len(seeds) == 1 else seeds,
        "gold": problem.answer, "answer": answer, "source": source,
        "correct": problem.check(answer),
        "engine_answer": getattr(outs[0], "answer", None) if len(outs) == 1 else None,
        "path_answers": path_answers,
        "path_tokens": [t for u in usages for t in u["path_tokens"]],
        "path_finish": [f for u in usages for f in u["path_finish"]],
        "summary_tokens": sum(u["summary_tokens"] for u in usages),
        "total_tokens": sum(u["total_tokens"] for u in usages),
        "latency": sum(u["latency"] for u in usages),
        "wall_time": sum(walls), "batch": batch, "batch_index": batch_index,
        "stats": usages[0]["stats"] if len(usages) == 1 else {},
    }
    if run_answers is not None:
        rec["run_answers"] = run_answers
    if save_text:
        rec["texts"] = [
            {"paths": [getattr(p, "text", "") for p in (getattr(o, "paths", None) or [])],
             "summary": getattr(getattr(o, "summary", None), "text", None)}
            for o in outs
        ]
    return rec


@dataclass(frozen=True)
class Batch:
    """Problems run together in one ``generate`` call (same row, same sample, same seeds)."""

    method: str
    num_paths: int
    sample: int
    problems: tuple[Problem, ...]


def plan_batches(problems: dict[str, list[Problem]], plan: RunPlan, done: set[Hashable]) -> list[Batch]:
    """Every batch still to run, in order benchmark -> row -> sample, skipping done samples."""
    out: list[Batch] = []
    for bench in plan.benchmarks:
        mine = select_problems(problems[bench], plan.limit, plan.shard)
        for method, p in plan.cells():
            for s in range(plan.samples):
                todo = [pr for pr in mine if (pr.benchmark, pr.id, method, p, s) not in done]
                for k in range(0, len(todo), plan.batch_size):
                    out.append(Batch(method, p, s, tuple(todo[k : k + plan.batch_size])))
    return out


def _run_batch(llm: GenerateLLM, b: Batch, plan: RunPlan, settings: EvalSettings) -> list[Record]:
    runs = plan.vote if "+maj" in b.method else 1
    seeds = [seed_for(settings.seed, b.sample, j, runs) for j in range(runs)]
    pp = settings.parallel(b.method, b.num_paths)
    prompts = [settings.prompt(pr.problem) for pr in b.problems]
    per_run: list[tuple[list[Any], float]] = []
    for seed in seeds:
        t0 = time.perf_counter()
        outs = list(llm.generate(prompts, pp, settings.sampling(seed)))
        per_run.append((outs, time.perf_counter() - t0))
        if len(outs) != len(prompts):
            raise RuntimeError(f"generate returned {len(outs)} outputs for {len(prompts)} prompts")
    return [
        make_record(pr, b.method, b.num_paths, b.sample, seeds, [r[0][i] for r in per_run],
                    [r[1] for r in per_run], len(prompts), plan.save_text, i)
        for i, pr in enumerate(b.problems)
    ]


def log_paths(out_dir: Path) -> list[Path]:
    """All sample logs of an output folder (one per shard layout used)."""
    return sorted(out_dir.glob("samples*.jsonl"))


def run_eval(
    llm: GenerateLLM, problems: dict[str, list[Problem]], plan: RunPlan, settings: EvalSettings,
    out_dir: str | Path, progress: bool = True,
) -> int:
    """Run what ``plan`` asks and is not yet in ``out_dir``'s logs; return the number of new samples.

    Safe to kill at any time: finished samples are on disk, a rerun continues where it stopped.
    """
    out = Path(out_dir)
    preflight(llm, problems, plan, settings)
    check_run_settings(out, settings)
    with AppendLog(out / plan.log_name(), sample_key) as log:  # opening drops a cut last line
        others = [p for p in log_paths(out) if p != log.path]
        done = log.done | {sample_key(r) for r in read_logs(others, sample_key)}
        batches = plan_batches(problems, plan, done)
        return _drive(llm, batches, plan, settings, log, progress)


def preflight(llm: GenerateLLM, problems: dict[str, list[Problem]], plan: RunPlan, settings: EvalSettings) -> None:
    """Fail before the first sample, not after hours: every method x P (and its budgets) is checked
    against the model (control tokens, paths, context, KV pages) with each benchmark's longest prompt,
    when the LLM can check requests (``LLM.check``); without it, the params are still validated."""
    check_termination(plan, settings)
    check = getattr(llm, "check", None)
    encode = getattr(llm, "encode_prompt", None)
    longest: list[Any] = []
    if check is not None:
        for bench in plan.benchmarks:
            mine = select_problems(problems[bench], plan.limit, plan.shard)
            prompts = [settings.prompt(pr.problem) for pr in mine]
            if prompts and encode is not None:
                longest.append(max((encode(p) for p in prompts), key=len))
            elif prompts:
                longest.append(max(prompts, key=len))
    for method, p in plan.cells():  # a bad combination (e.g. termination 3 with P=2) fails here too
        pp = settings.parallel(method, p)
        for prompt in longest:
            try:
                check(prompt, pp, settings.sampling(settings.seed))  # type: ignore[misc]
            except ParaThinkerError as e:
                msg = str(e)
                if isinstance(e, TokenizerError):  # the engine's advice in eval's terms
                    msg = msg.replace("use mode=sequential or mode=majority", "run --method sequential,majority")
                raise type(e)(f"--method {method} --paths {p}: {msg}") from None


def _drive(
    llm: GenerateLLM, batches: list[Batch], plan: RunPlan, settings: EvalSettings, log: AppendLog, progress: bool
) -> int:
    new = 0
    with tqdm(
        total=sum(len(b.problems) for b in batches), unit="sample", dynamic_ncols=True,
        disable=None if progress else True,  # None: no bar when stderr is not a terminal (a log)
    ) as bar:
        for b in batches:
            bar.set_description(f"{b.problems[0].benchmark} {b.method} P={b.num_paths} s{b.sample}")
            for rec in _run_batch(llm, b, plan, settings):
                log.append(rec)
                new += 1
            bar.update(len(b.problems))
    return new
