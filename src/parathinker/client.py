"""A pool of OpenAI-compatible endpoints: the client side of data generation and remote evaluation.

One ``openai.AsyncOpenAI`` per base URL (replicas of one model). Each request goes to the
least busy URL (fewest requests in flight; ties in turn), at most ``concurrency`` requests are in
flight over the whole pool, and the retry policy is ours (the openai client's own retries are
off): 429, 408/409, 5xx, timeouts and dropped connections are retried with exponential backoff
and full jitter (a ``Retry-After`` header is honoured), on another URL when there is one; other
errors fail at once. A request that still fails raises ``RequestFailed``; callers record it.

``sample`` asks for ``n`` completions of one prompt: one request with ``n`` where the server
accepts it, else ``n`` single requests (a server that rejects ``n > 1`` or ignores it is
remembered, per URL). Responses are yielded as they arrive, tagged with the sample indices they
cover, so a caller can log each one at once.

Reasoning is read from the message's ``reasoning_content`` (vLLM, DeepSeek) or ``reasoning``
(newer vLLM, OpenRouter) field, else from a ``<think>...</think>`` block in ``content``
(also a bare ``...</think>`` when the chat template opened the block, and an unclosed
``<think>...`` when the answer was cut off). Non-standard fields a server adds to the message
(``parathinker serve``: ``answer``, ``paths``, ``votes``) are kept in ``Completion.extra``, and
its ParaThinker request fields (``num_paths``, ``termination``, ``mode``, budgets) go in
``extra_body``: what remote evaluation needs. This module imports nothing from the engine.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

RETRY_STATUS = frozenset({408, 409, 429})  # plus every status >= 500


@dataclass(frozen=True)
class RetryPolicy:
    """How failed requests are retried: up to ``max_retries`` more tries, waits doubling from ``initial``."""

    max_retries: int = 6
    initial: float = 1.0
    maximum: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {self.max_retries}")
        if not 0 <= self.initial <= self.maximum:
            raise ConfigError(f"backoff must satisfy 0 <= initial <= maximum, got {self.initial} and {self.maximum}")

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait before try ``attempt + 1`` (attempt 0 failed first): full jitter, capped."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.maximum)
        cap = min(self.maximum, self.initial * 2**attempt)
        return rng.uniform(cap / 2, cap)


@dataclass(frozen=True)
class Completion:
    """One choice of a response: the answer text, the reasoning apart, and why it stopped."""

    content: str
    reasoning: str
    finish_reason: str | None
    extra: dict[str, Any] = field(default_factory=dict)  # the message's non-standard fields


@dataclass(frozen=True)
class ChatResult:
    """One successful response: its choices, token counts, and where and how it was obtained."""

    choices: tuple[Completion, ...]
    prompt_tokens: int
    completion_tokens: int
    url: str
    attempts: int
    latency: float
    extra: dict[str, Any] = field(default_factory=dict)  # the response's non-standard fields


@dataclass(frozen=True)
class Response:
    """What ``sample`` yields: the sample indices one response covers, and the result or the error."""

    indices: tuple[int, ...]
    result: ChatResult | None = None
    error: RequestFailed | None = None


class RequestFailed(Exception):
    """A request failed for good (not retryable, or out of retries). ``status``: HTTP status or None."""

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 1, url: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts
        self.url = url


def normalize_base_url(url: str) -> str:
    """``http://host:8000`` -> ``http://host:8000/v1`` (the OpenAI convention); others kept as given."""
    u = url.strip().rstrip("/")
    parts = urlsplit(u)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--base-url {url!r}: give an http(s) URL such as http://localhost:8000/v1")
    return u + "/v1" if parts.path in ("", "/") else u


_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


def split_reasoning(content: str | None, extra: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """(reasoning, answer) of a message: a reasoning field if the server sent one, else a think block."""
    content = content or ""
    extra = extra or {}
    for key in ("reasoning_content", "reasoning"):
        r = extra.get(key)
        if isinstance(r, str) and r.strip():
            return r.strip(), content.strip()
    head, sep, tail = content.partition(_THINK_CLOSE)
    if sep:  # "<think> r </think> a" or (template opened the block) "r </think> a"
        start = head.find(_THINK_OPEN)
        reasoning = head[start + len(_THINK_OPEN):] if start >= 0 else head
        return reasoning.strip(), tail.strip()
    start = content.find(_THINK_OPEN)
    if start >= 0:  # cut off while thinking
        return content[start + len(_THINK_OPEN):].strip(), content[:start].strip()
    return "", content.strip()


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    value = getattr(response, "headers", {}).get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _classify(exc: Exception) -> tuple[bool, int | None]:
    """(retryable, HTTP status) of an exception raised by the openai client."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        return status in RETRY_STATUS or status >= 500, status
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        return True, None
    return False, None


def _brief(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


class ClientPool:
    """OpenAI-compatible clients over one or more base URLs (replicas), with our retry policy.

    ``client_factory(url, api_key, timeout)`` makes a client (tests pass fakes); by default an
    ``openai.AsyncOpenAI`` with ``max_retries=0``. Create and use the pool inside one event loop.
    """

    def __init__(
        self,
        base_urls: Sequence[str],
        *,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 32,
        timeout: float = 600.0,
        retry: RetryPolicy | None = None,
        seed: int | None = None,
        client_factory: Callable[[str, str, float], Any] | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        if not base_urls:
            raise ConfigError("give at least one --base-url")
        if concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
        if timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout}")
        self.urls = [normalize_base_url(u) for u in base_urls]
        if len(set(self.urls)) != len(self.urls):
            raise ConfigError(f"--base-url lists a URL twice: {self.urls}")
        key = api_key if api_key is not None else os.environ.get(api_key_env) or "EMPTY"  # vLLM's convention
        factory = client_factory or _openai_client
        self.clients = {u: factory(u, key, timeout) for u in self.urls}
        self.retry = retry or RetryPolicy()
        self._rng = random.Random(seed)
        self._sleep = sleep
        self._sem = asyncio.Semaphore(concurrency)
        self._busy = dict.fromkeys(self.urls, 0)
        self._turn = itertools.count()
        self.n_support: dict[str, bool | None] = dict.fromkeys(self.urls)  # None: not known yet
        self.requests = dict.fromkeys(self.urls, 0)  # finished HTTP requests per URL (any outcome)
        self.retries = 0
        self.failures = 0

    # -- choosing a URL ---------------------------------------------------------------------
    def _pick(self, *, avoid: str | None = None, want_n: bool = False) -> str:
        urls = [u for u in self.urls if u != avoid] or self.urls
        if want_n:
            urls = [u for u in urls if self.n_support[u] is not False] or urls
        low = min(self._busy[u] for u in urls)
        least = [u for u in urls if self._busy[u] == low]
        return least[next(self._turn) % len(least)]

    def all_lack_n(self) -> bool:
        """True when every URL is known to not accept ``n > 1``."""
        return all(v is False for v in self.n_support.values())

    # -- one request ------------------------------------------------------------------------
    async def chat(self, messages: list[dict[str, str]], model: str, *, n: int = 1, **params: Any) -> ChatResult:
        """One chat completion request (retried per the policy). ``params``: create() keywords,
        ``extra_body`` included. Raises ``RequestFailed``."""
        avoid: str | None = None
        attempt = 0
        while True:
            async with self._sem:
                url = self._pick(avoid=avoid, want_n=n > 1)  # chosen once a slot is free: busy counts are current
                t0 = time.perf_counter()
                self._busy[url] += 1
                try:
                    resp = await self.clients[url].chat.completions.create(
                        model=model, messages=messages, n=n, **params
                    )
                except Exception as e:  # classified below: retried, or a RequestFailed
                    retryable, status = _classify(e)
                    if not retryable and status is None and not _is_openai_error(e):
                        raise
                    if not retryable or attempt >= self.retry.max_retries:
                        self.failures += 1
                        why = "" if not retryable else f" after {attempt + 1} tries"
                        raise RequestFailed(f"{url}: {_brief(e)}{why}", status=status,
                                            attempts=attempt + 1, url=url) from None
                    wait = self.retry.delay(attempt, self._rng, _retry_after(e))
                else:
                    return _result(resp, url, attempt + 1, time.perf_counter() - t0)
                finally:
                    self._busy[url] -= 1
                    self.requests[url] += 1
            self.retries += 1
            attempt += 1
            avoid = url if len(self.urls) > 1 else None
            await self._sleep(wait)

    # -- n samples of one prompt --------------------------------------------------------------
    async def sample(
        self, messages: list[dict[str, str]], model: str, n: int, *,
        seeds: Sequence[int | None] | None = None, **params: Any,
    ) -> AsyncIterator[Response]:
        """Yield responses covering samples ``0..n-1`` as they arrive (see module doc).

        ``seeds[i]``: the seed of sample i (a request with ``n`` sends the seed of its first
        sample), so samples are reproducible on servers that honour seeds.
        """
        seeds = list(seeds) if seeds is not None else [None] * n
        todo = list(range(n))
        rejected_n: str | None = None
        if n > 1 and not self.all_lack_n():
            try:
                res = await self.chat(messages, model, n=n, **_seeded(params, seeds[0]))
            except RequestFailed as e:
                if e.status in (400, 422):  # perhaps n itself: confirmed if a single request works
                    rejected_n = e.url
                else:
                    yield Response(tuple(todo), error=e)
                    return
            else:
                got = min(len(res.choices), n)
                if got < n:  # the server ignored n
                    self.n_support[res.url] = False
                elif self.n_support[res.url] is None:
                    self.n_support[res.url] = True
                yield Response(tuple(todo[:got]), result=res)
                todo = todo[got:]
        if not todo:
            return

        async def one(i: int) -> Response:
            try:
                return Response((i,), result=await self.chat(messages, model, n=1, **_seeded(params, seeds[i])))
            except RequestFailed as e:
                return Response((i,), error=e)

        for fut in asyncio.as_completed([one(i) for i in todo]):
            r = await fut
            if rejected_n is not None and r.result is not None:
                self.n_support[rejected_n] = False
                rejected_n = None
            yield r

    async def models(self, url: str) -> list[str] | None:
        """Model ids served at ``url`` (``GET /models``), or None when the server has no such route.
        Raises ``RequestFailed`` when the server cannot be reached."""
        try:
            page = await self.clients[url].models.list()
        except Exception as e:
            _, status = _classify(e)
            if status in (404, 405):
                return None
            if not _is_openai_error(e):
                raise
            raise RequestFailed(f"{url}: {_brief(e)}", status=status, url=url) from None
        return [m.id for m in getattr(page, "data", [])]

    async def aclose(self) -> None:
        """Close every client's HTTP connections."""
        for c in self.clients.values():
            close = getattr(c, "close", None)
            if close is not None:
                await close()


def _is_openai_error(e: Exception) -> bool:
    import openai

    return isinstance(e, openai.OpenAIError)


def _seeded(params: dict[str, Any], seed: int | None) -> dict[str, Any]:
    return params if seed is None else {**params, "seed": seed}


def _openai_client(url: str, api_key: str, timeout: float) -> Any:
    try:
        import openai
    except ImportError:  # a core dependency; only a broken install lacks it
        raise ConfigError("the 'openai' package is missing: pip install 'openai>=1.40'") from None
    return openai.AsyncOpenAI(base_url=url, api_key=api_key, timeout=timeout, max_retries=0)


def _extra(obj: Any) -> dict[str, Any]:
    return dict(getattr(obj, "model_extra", None) or {})


def _result(resp: Any, url: str, attempts: int, latency: float) -> ChatResult:
    choices = []
    for c in sorted(resp.choices or [], key=lambda c: getattr(c, "index", 0) or 0):
        msg = c.message
        extra = _extra(msg)
        reasoning, content = split_reasoning(msg.content, extra)
        choices.append(Completion(content, reasoning, c.finish_reason, extra))
    usage = getattr(resp, "usage", None)
    return ChatResult(
        tuple(choices),
        int(getattr(usage, "prompt_tokens", 0) or 0),
        int(getattr(usage, "completion_tokens", 0) or 0),
        url, attempts, latency, _extra(resp),
    )
