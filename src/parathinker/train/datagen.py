"""``parathinker data generate``: multi-path SFT data from a teacher behind an OpenAI-compatible API.

For each problem: P paths sampled from the teacher (``client.ClientPool.sample``; each path slot
has its own seed, derived from ``--seed``, the problem id and the slot), every response logged
at once (``datagen_log.RawLog``); each path's answer graded against the problem's answer with
the eval harness's grading (math-verify) in worker processes; paths filtered (empty, control
tokens, truncated with ``--drop-truncated``, wrong with ``--wrong-paths drop``, duplicates);
the problem kept when at least ``--min-correct`` kept paths are correct; then a summary: the
released form (``template``: the released summary prefix and the gold answer boxed) or written
by the teacher from the kept paths (``teacher``: a second call, its boxed answer verified).

Resume: the log is the record of what the teacher said. A rerun of the same command reads it,
asks only for the path slots and summaries it lacks, and rewrites the output (in problem
order, atomically) and the manifest from it; so an interrupted run followed by a rerun writes
what one uninterrupted run writes. Failed requests are not in the log as responses: a rerun
asks again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import multiprocessing
import os
import time
import warnings
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .data import _CONTROL_RE  # the control tokens `data check` refuses in text
from .datagen_config import DEFAULT_INSTRUCTION, DataGenConfig  # noqa: F401 - DataGenConfig is this module's API
from .datagen_log import RawLog
from .datagen_stats import GenStats
from .datagen_text import (  # noqa: F401 - path_seed, template_summary: this module's API too
    collapse_spaces,
    grade_paths,
    path_body,
    path_seed,
    summary_messages,
    teacher_messages,
    template_summary,
)
from .problems import Decontaminator, SourceProblem, load_problems


# -- the run ---------------------------------------------------------------------------------
@dataclass
class _Kept:
    refs: list[tuple[int, int]]  # (log offset, choice index) of each kept path, in slot order
    summary: str


class Generator:
    """One run of ``data generate`` (see module doc). ``pool`` is a ``client.ClientPool``."""

    def __init__(self, cfg: DataGenConfig, pool: Any, problems: list[SourceProblem],
                 decontam: Decontaminator | None = None, tokenizer: Any = None) -> None:
        self.cfg, self.pool, self.problems = cfg, pool, problems
        self.decontam, self.tokenizer = decontam, tokenizer
        self.log = RawLog(cfg.log_path, cfg.request())
        self.stats = GenStats(paths_per_problem=cfg.paths, length_unit="tokens" if tokenizer is not None else "characters")
        self.kept: dict[str, _Kept] = {}
        self._paths: dict[str, dict[int, tuple[int, int]]] = {}  # pid -> slot -> (offset, choice index)
        self._summaries: dict[tuple[str, str], int] = {}  # (pid, paths key) -> offset
        for off, rec in self.log.scan():
            kind = rec.get("kind")
            if kind == "paths":
                slots = self._paths.setdefault(rec["id"], {})
                for j, s in enumerate(rec["slots"]):
                    slots.setdefault(int(s), (off, j))
            elif kind == "summary":
                self._summaries.setdefault((rec["id"], rec["paths_key"]), off)
            if kind in ("paths", "summary"):  # counts cover the whole log, so a resumed run reports the same
                self.stats.resumed_responses += 1
                self.stats.add_usage(rec.get("prompt_tokens", 0), rec.get("completion_tokens", 0))
        self._executor: Executor | None = None
        self._params: dict[str, Any] = {"temperature": cfg.temperature, "top_p": cfg.top_p}
        if cfg.max_tokens is not None:
            self._params["max_tokens"] = cfg.max_tokens
        if cfg.extra():
            self._params["extra_body"] = cfg.extra()

    async def _off_loop(self, fn: Any, *args: Any) -> Any:
        if self._executor is not None:
            try:
                return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
            except BrokenProcessPool:  # e.g. a __main__ the workers cannot import (stdin, some notebooks)
                if self._executor is not None:
                    warnings.warn("grading processes could not start; grading in threads (no math-verify timeouts)",
                                  stacklevel=2)
                    self._executor.shutdown(wait=False, cancel_futures=True)
                    self._executor = None
        # in threads math-verify has no timeouts and warns so on every call: said once (config / warning above)
        logging.getLogger("math_verify").setLevel(logging.ERROR)
        return await asyncio.to_thread(fn, *args)

    async def run(self, progress: bool = True) -> GenStats:
        """Process every problem; then write the output and return the statistics."""
        from tqdm.auto import tqdm

        t0 = time.time()
        if self.cfg.grade_workers:
            self._executor = ProcessPoolExecutor(self.cfg.grade_workers, mp_context=multiprocessing.get_context("spawn"))
        gate = asyncio.Semaphore(self.cfg.concurrency)
        bar = tqdm(total=len(self.problems), unit="problem", desc="data generate", smoothing=0.05,
               disable=None if progress else True)  # None: no bar when stderr is not a terminal (a log)

        async def one(p: SourceProblem) -> None:
            async with gate:
                await self._problem(p)
            bar.update(1)
            bar.set_postfix(kept=len(self.kept), refresh=False)

        try:
            await asyncio.gather(*(one(p) for p in self.problems))
        finally:
            bar.close()
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
            self.log.close()
        self.stats.seconds = time.time() - t0
        return self.stats

    async def _problem(self, p: SourceProblem) -> None:
        st = self.stats
        st.problems_in += 1
        if p.invalid:
            return st.drop(p.invalid)
        if self.decontam is not None and self.decontam.hits(p.problem):
            return st.drop("contaminated")
        have = self._paths.setdefault(p.id, {})
        missing = [s for s in range(self.cfg.paths) if s not in have]
        failed = False
        if missing:
            seeds = [path_seed(self.cfg.seed, p.id, s) for s in missing]
            msgs = teacher_messages(p.problem, self.cfg.instruction)
            async for r in self.pool.sample(msgs, self.cfg.model, len(missing), seeds=seeds, **self._params):
                slots = [missing[i] for i in r.indices]
                if r.result is None:
                    failed = True
                    self.log.append({"kind": "failed", "stage": "paths", "id": p.id, "slots": slots,
                                     "error": str(r.error), "attempts": r.error.attempts, "time": time.time()})
                    continue
                res = r.result
                off = self.log.append({
                    "kind": "paths", "id": p.id, "slots": slots, "seed": seeds[r.indices[0]],
                    "choices": [{"reasoning": c.reasoning, "content": c.content, "finish_reason": c.finish_reason}
                                for c in res.choices[: len(slots)]],
                    "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                    "url": res.url, "attempts": res.attempts, "latency": round(res.latency, 3), "time": time.time(),
                })
                st.add_usage(res.prompt_tokens, res.completion_tokens)
                for j, s in enumerate(slots):
                    have[s] = (off, j)
        if failed:
            return st.drop("request failed")
        await self._decide(p, [have[s] for s in range(self.cfg.paths)])

    async def _decide(self, p: SourceProblem, refs: list[tuple[int, int]]) -> None:
        st, cfg = self.stats, self.cfg
        records: dict[int, dict[str, Any]] = {}
        choices = []
        for off, j in refs:
            if off not in records:
                records[off] = self.log.read(off)
            choices.append(records[off]["choices"][j])
        grades = await self._off_loop(grade_paths, [(c["reasoning"], c["content"]) for c in choices], p.answer,
                                      p.grader, p.record)
        kept_refs, bodies, texts, seen, correct = [], [], [], set(), 0
        for ref, c, (_, ok) in zip(refs, choices, grades):
            body = path_body(c, cfg.path_text)
            truncated = c.get("finish_reason") == "length"
            st.add_path(ok, truncated)
            reason = None
            if not body:
                reason = "empty"
            elif _CONTROL_RE.search(body):
                reason = "control tokens"
            elif truncated and cfg.drop_truncated:
                reason = "truncated"
            elif not ok and cfg.wrong_paths == "drop":
                reason = "wrong"
            elif collapse_spaces(body) in seen:
                reason = "duplicate"
            if reason:
                st.drop_path(reason)
                continue
            seen.add(collapse_spaces(body))
            kept_refs.append(ref)
            bodies.append((c["reasoning"], c["content"]))
            texts.append(body)
            correct += ok
        if not kept_refs:
            return st.drop("no usable paths")
        if correct < cfg.min_correct:
            return st.drop("too few correct")
        if cfg.summary == "template":
            summary = template_summary(p.answer, p.grader)
        else:
            summary = await self._teacher_summary(p, texts, bodies)
            if summary is None:
                return
        lengths = [len(t) for t in texts]
        if self.tokenizer is not None:
            lengths = await asyncio.to_thread(
                lambda: [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts])
        st.keep(len(kept_refs), correct, lengths)
        self.kept[p.id] = _Kept(kept_refs, summary)

    async def _teacher_summary(self, p: SourceProblem, texts: list[str], bodies: list[tuple[str, str]]) -> str | None:
        st = self.stats
        key = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
        off = self._summaries.get((p.id, key))
        if off is None:
            msgs = summary_messages(p.problem, bodies)
            params = {**self._params, "max_tokens": self.cfg.summary_max_tokens}
            seed = path_seed(self.cfg.seed, p.id, "summary")
            if seed is not None:
                params["seed"] = seed
            from ..client import RequestFailed

            try:
                res = await self.pool.chat(msgs, self.cfg.model, **params)
            except RequestFailed as e:
                self.log.append({"kind": "failed", "stage": "summary", "id": p.id, "paths_key": key,
                                 "error": str(e), "attempts": e.attempts, "time": time.time()})
                st.drop("summary request failed")
                return None
            c = res.choices[0] if res.choices else None
            off = self.log.append({
                "kind": "summary", "id": p.id, "paths_key": key,
                "choices": [{"reasoning": c.reasoning, "content": c.content, "finish_reason": c.finish_reason}]
                if c else [],
                "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                "url": res.url, "attempts": res.attempts, "latency": round(res.latency, 3), "time": time.time(),
            })
            st.add_usage(res.prompt_tokens, res.completion_tokens)
            self._summaries[(p.id, key)] = off
        rec = self.log.read(off)
        content = (rec["choices"][0]["content"] if rec["choices"] else "").strip()
        if not content or _CONTROL_RE.search(content):
            st.drop("summary unusable")
            return None
        (pred, ok), = await self._off_loop(grade_paths, [("", content)], p.answer, p.grader, p.record)
        if not ok:
            st.drop("summary incorrect")
            return None
        return content

    def write_output(self) -> int:
        """Write the kept problems, in problem order, atomically; returns how many."""
        out = Path(self.cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        n = 0
        with Path(self.cfg.log_path).open("rb") as log, tmp.open("w", encoding="utf-8") as f:
            for p in self.problems:
                k = self.kept.get(p.id)
                if k is None:
                    continue
                paths = []
                for off, j in k.refs:
                    log.seek(off)
                    paths.append(path_body(json.loads(log.readline())["choices"][j], self.cfg.path_text))
                rec = {"id": p.id, "prompt": p.problem, "paths": paths, "summary": k.summary, "answer": p.answer}
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
        return n


def manifest(cfg: DataGenConfig, stats: GenStats, pool: Any, written: int, started: float) -> dict[str, Any]:
    """What the run was: teacher, parameters, counts, time, project version."""
    from .. import __version__

    params = asdict(cfg)
    return {
        "parathinker_version": __version__,
        "teacher": {"model": cfg.model, "base_urls": list(pool.urls),
                    "n_support": {u: v for u, v in pool.n_support.items()}},
        "parameters": {**params, "base_urls": list(cfg.base_urls)},
        "files": {"out": str(cfg.out), "raw_log": str(cfg.log_path)},
        "counts": stats.as_dict(),
        "written": written,
        "requests": {"by_url": dict(pool.requests), "retries": pool.retries, "failures": pool.failures},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 3),
    }


def generate(cfg: DataGenConfig, *, progress: bool = True, client_factory: Any = None) -> tuple[GenStats, dict[str, Any]]:
    """Run ``data generate`` end to end; returns the statistics and the manifest (also written)."""
    started = time.time()
    problems = load_problems(cfg.problems, id_field=cfg.id_field, problem_field=cfg.problem_field,
                             answer_field=cfg.answer_field, split=cfg.split, limit=cfg.limit)
    decontam = Decontaminator(cfg.decontaminate) if cfg.decontaminate else None
    tokenizer = _load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    return asyncio.run(_generate(cfg, problems, decontam, tokenizer, progress, client_factory, started))


async def _generate(cfg: DataGenConfig, problems: list[SourceProblem], decontam: Decontaminator | None,
                    tokenizer: Any, progress: bool, client_factory: Any, started: float) -> tuple[GenStats, dict]:
    from ..client import ClientPool, RetryPolicy

    pool = ClientPool(cfg.base_urls, api_key_env=cfg.api_key_env, concurrency=cfg.concurrency, timeout=cfg.timeout,
                      retry=RetryPolicy(cfg.max_retries, cfg.backoff, max(60.0, cfg.backoff)),
                      client_factory=client_factory)
    try:
        await preflight(pool, cfg.model)
        gen = Generator(cfg, pool, problems, decontam, tokenizer)
        stats = await gen.run(progress)
        written = gen.write_output()
    finally:
        await pool.aclose()
    man = manifest(cfg, stats, pool, written, started)
    tmp = cfg.manifest_path.with_name(cfg.manifest_path.name + ".tmp")
    tmp.write_text(json.dumps(man, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, cfg.manifest_path)
    return stats, man


async def preflight(pool: Any, model: str) -> None:
    """Every URL answers, and serves ``model`` (where it lists its models): else one clear error."""
    from ..client import RequestFailed

    for url in pool.urls:
        try:
            served = await pool.models(url)
        except RequestFailed as e:
            raise ConfigError(f"cannot reach the teacher at {url} ({e}); is the server running?") from None
        if served is not None and model not in served:
            raise ConfigError(f"{url} does not serve --model {model!r}; it serves: {', '.join(served) or 'nothing'}")


def _load_tokenizer(name: str) -> Any:
    try:
        import transformers

        from .prepare import quiet_transformers

        with quiet_transformers():
            return transformers.AutoTokenizer.from_pretrained(name)
    except Exception as e:  # not found / offline: one line
        raise ConfigError(f"--tokenizer {name}: cannot load it ({type(e).__name__}); give a local tokenizer folder") from None
