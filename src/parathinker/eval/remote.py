"""Evaluate a served model: the harness's ``generate`` over HTTP (``parathinker eval --base-url``).

``RemoteLLM.generate`` has the engine's signature and semantics, so the harness (benchmarks,
methods, samples, grading, resumable log, report) runs unchanged: each prompt is one chat request
to an OpenAI-compatible ``parathinker serve`` (or several replicas, through ``client.ClientPool``),
all prompts of a call in flight together. The question is sent with ``as_question`` so the server
formats it exactly as ``LLM.generate`` does; prompt i of a call gets seed ``seed + i``, as the
engine gives it; the ParaThinker fields carry what the caller set (unset fields take the served
checkpoint's defaults, as in-process); ``return_paths`` brings every path back for grading.
A seeded run therefore gives the in-process run's answers (tested with greedy decoding).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from ..client import ChatResult, ClientPool, RequestFailed, normalize_base_url
from ..errors import ConfigError, ParaThinkerError

# ParallelParams / SamplingParams fields the API carries (the others are in-process ablations)
SENT_PARALLEL = ("num_paths", "termination", "max_path_tokens", "summary_max_tokens", "mode")
SENT_SAMPLING = ("temperature", "top_p", "top_k", "seed")


class RemoteError(ParaThinkerError):
    """A served model could not be evaluated (unreachable, model not served, a request failed for good)."""


@dataclass
class RemotePath:
    index: int
    text: str
    finish_reason: str
    num_tokens: int


@dataclass
class RemoteSummary:
    text: str
    num_tokens: int
    finish_reason: str | None = None


@dataclass
class RemoteOutput:
    """What the harness reads of an engine output, rebuilt from one response."""

    paths: list[RemotePath]
    summary: RemoteSummary | None
    answer: str | None
    votes: dict[str, int] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)


def _explicit(params: Any, names: Sequence[str]) -> dict[str, Any]:
    """The fields of ``params`` the caller set (all of them for params that do not track it)."""
    chosen = getattr(params, "_set", None)
    known = {f.name for f in fields(params)}
    return {n: getattr(params, n) for n in names if n in known and (chosen is None or n in chosen)}


def request_fields(pp: Any, sp: Any, index: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(standard create() keywords, ParaThinker extra_body) for prompt ``index`` of a call."""
    if getattr(pp, "flat_positions", False) or not getattr(pp, "thought_embeddings", True):
        raise ConfigError("the ablations (--flat-positions, --no-thought-embeddings) run in-process only: drop "
                          "--base-url or the ablation")
    extra = _explicit(pp, SENT_PARALLEL)
    extra["num_paths"], extra["mode"] = pp.num_paths, pp.mode
    if "termination" in extra:
        extra["termination"] = str(extra["termination"])
    std = _explicit(sp, SENT_SAMPLING)
    if "top_k" in std:
        extra["top_k"] = std.pop("top_k")
    if sp.seed is not None:
        std["seed"] = sp.seed + index  # the engine gives prompt i of a call seed + i
    if getattr(pp, "summary_prefix", None) is not None and "summary_prefix" in (getattr(pp, "_set", None) or ()):
        raise ConfigError("--summary-prefix cannot be sent to a server: set it in the checkpoint's parathinker.json")
    extra.update(return_paths=True, as_question=True)
    return std, extra


def to_output(res: ChatResult, mode: str) -> RemoteOutput:
    """One response -> the fields the harness grades and logs."""
    choice = res.choices[0]
    ex = choice.extra
    paths = [RemotePath(int(p["index"]), p.get("text") or "", p.get("finish_reason") or "", int(p.get("tokens") or 0))
             for p in ex.get("paths") or []]
    stats = {"time_total": res.latency, "prompt_tokens": res.prompt_tokens}
    if mode == "sequential":  # the one sample is the content
        paths = [RemotePath(1, choice.content, "end" if choice.finish_reason == "stop" else "length",
                            res.completion_tokens)]
        return RemoteOutput(paths, None, ex.get("answer"), {}, stats)
    summary = None
    if mode in ("parathinker", "reprefill"):
        summary = RemoteSummary(choice.content, max(0, res.completion_tokens - sum(p.num_tokens for p in paths)),
                                choice.finish_reason)
    return RemoteOutput(paths, summary, ex.get("answer"), dict(ex.get("votes") or {}), stats)


class RemoteLLM:
    """``generate`` (the harness's interface) over one or more OpenAI-compatible base URLs."""

    def __init__(self, base_urls: Sequence[str], served_model: str | None = None, *, concurrency: int = 32,
                 api_key_env: str = "OPENAI_API_KEY", timeout: float = 3600.0):
        self.base_urls = list(base_urls)
        self.concurrency = concurrency
        self.api_key_env = api_key_env
        self.timeout = timeout
        if not self.base_urls:
            raise ConfigError("give at least one --base-url")
        if concurrency < 1:
            raise ConfigError(f"--concurrency must be >= 1, got {concurrency}")
        self.urls = [normalize_base_url(u) for u in self.base_urls]
        self.card = asyncio.run(self._card(served_model))
        self.served_model: str = self.card["id"]

    def _pool(self) -> ClientPool:
        return ClientPool(self.urls, api_key_env=self.api_key_env, concurrency=self.concurrency,
                          timeout=self.timeout)

    async def _card(self, wanted: str | None) -> dict[str, Any]:
        """The served model's card (``/v1/models``) from every URL; they must all serve it."""
        import openai

        cards = []
        key = os.environ.get(self.api_key_env) or "EMPTY"
        for url in self.urls:
            client = openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=2, timeout=30)
            try:
                listing = await client.models.list()
            except openai.OpenAIError as e:
                raise RemoteError(f"--base-url {url}: cannot list its models ({type(e).__name__}: {e})") from None
            finally:
                await client.close()
            data = [m.model_dump() for m in listing.data]
            names = [m["id"] for m in data]
            pick = wanted or (names[0] if len(names) == 1 else None)
            if pick is None:
                raise ConfigError(f"--base-url {url} serves {names}: choose one with --served-model")
            if pick not in names:
                raise RemoteError(f"--base-url {url} does not serve {pick!r} (it serves {names})")
            cards.append(next(m for m in data if m["id"] == pick))
        return cards[0]

    def check_plan(self, methods_paths: Sequence[tuple[str, int]]) -> None:
        """Fail before the first sample when the served model cannot run a row (too many paths)."""
        most = self.card.get("max_paths")
        for method, p in methods_paths:
            if method.split("+")[0] in ("parathinker", "reprefill") and most is not None and p > int(most):
                raise ConfigError(f"{method} with P={p}: the served model {self.served_model!r} has only "
                                  f"{most} think tokens")

    def generate(self, prompts: Sequence[str], pp: Any, sp: Any, **_: Any) -> list[RemoteOutput]:
        """Every prompt as one request, all in flight together; outputs in prompt order."""
        return asyncio.run(self._generate(list(prompts), pp, sp))

    async def _generate(self, prompts: list[str], pp: Any, sp: Any) -> list[RemoteOutput]:
        pool = self._pool()
        try:
            async def one(i: int, q: str) -> RemoteOutput:
                std, extra = request_fields(pp, sp, i)
                try:
                    res = await pool.chat([{"role": "user", "content": q}], self.served_model, extra_body=extra, **std)
                except RequestFailed as e:
                    raise RemoteError(f"a request failed for good: {e}") from None
                return to_output(res, pp.mode)

            return list(await asyncio.gather(*(one(i, q) for i, q in enumerate(prompts))))
        finally:
            await pool.aclose()
