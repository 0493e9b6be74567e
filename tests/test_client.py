"""parathinker.client: reasoning parsing, retry policy, URL spreading, n detection, over real HTTP to a local stub."""

from __future__ import annotations

import asyncio
import random

import pytest
from helpers import free_port
from train.teacher_stub import MODEL, Case, Stub

from parathinker.client import ClientPool, RequestFailed, RetryPolicy, normalize_base_url, split_reasoning
from parathinker.errors import ConfigError
from parathinker.train.datagen import path_seed, preflight

MSGS = [{"role": "user", "content": "q"}]


@pytest.mark.parametrize(("content", "extra", "want"), [
    ("A", {"reasoning_content": "R"}, ("R", "A")),
    ("A", {"reasoning": "R"}, ("R", "A")),
    ("<think>\nR\n</think>\n\nA", {}, ("R", "A")),
    ("R\n</think>\nA", {}, ("R", "A")),  # the chat template opened the block
    ("<think>R cut off", {}, ("R cut off", "")),  # truncated while thinking
    ("just an answer", {}, ("", "just an answer")),
    (None, {"reasoning_content": "R"}, ("R", "")),
    ("<think>x</think>A", {"reasoning_content": "  "}, ("x", "A")),  # an empty field does not win
])
def test_split_reasoning(content, extra, want):
    assert split_reasoning(content, extra) == want


def test_base_urls_and_backoff():
    assert normalize_base_url("http://h:8000") == "http://h:8000/v1"
    assert normalize_base_url("http://h:8000/v1/") == "http://h:8000/v1"
    assert normalize_base_url("https://api.example.com/openai/v1") == "https://api.example.com/openai/v1"
    with pytest.raises(ConfigError, match="http"):
        normalize_base_url("localhost:8000")
    pol, rng = RetryPolicy(max_retries=5, initial=1.0, maximum=8.0), random.Random(0)
    for attempt, cap in enumerate([1, 2, 4, 8, 8, 8]):
        d = [pol.delay(attempt, rng) for _ in range(200)]
        assert cap / 2 <= min(d) and max(d) <= cap and max(d) - min(d) > cap / 4  # full jitter in [cap/2, cap]
    assert pol.delay(0, rng, retry_after=3.0) == 3.0 and pol.delay(0, rng, retry_after=100) == 8.0


def _cases(k: int) -> list[Case]:
    return [Case(f"p{i}", f"problem {i}", str(i), ["right"] * 4) for i in range(k)]


def _pool(urls, **kw) -> ClientPool:
    kw = dict(timeout=2.0, retry=RetryPolicy(3, 0.001, 0.01)) | kw
    return ClientPool(urls, **kw)


def test_replicas_share_the_load_and_a_dead_one_is_skipped():
    stubs = [Stub(_cases(40)), Stub(_cases(40))]
    urls = [s.start() for s in stubs]
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: connection refused

    async def go() -> list:
        pool = _pool([*urls, dead], concurrency=6)
        try:
            rs = await asyncio.gather(*(pool.chat(MSGS, MODEL, seed=path_seed(0, f"p{i}", 0)) for i in range(40)))
        finally:
            await pool.aclose()
        return [rs, pool]

    try:
        rs, pool = asyncio.run(go())
    finally:
        for s in stubs:
            s.stop()
    served = [s.requests["chat"] for s in stubs]
    assert sum(served) == 40 and min(served) >= 15  # spread, not all on one
    assert all(r.url in urls for r in rs) and pool.requests[dead] >= 1 and pool.retries == pool.requests[dead]
    assert [r.choices[0].content for r in rs] == [f"So the answer is \\boxed{{{i}}}." for i in range(40)]


def test_failures_retry_or_fail_at_once():
    cs = _cases(3)
    cs[0].first = "500"  # retried, then fine
    cs[1].always_500 = True  # out of retries
    stub = Stub(cs)
    url = stub.start()

    async def go():
        pool = _pool([url])
        out = []
        for i in range(3):
            try:
                out.append(await pool.chat(MSGS, MODEL, seed=path_seed(0, f"p{i}", 0)))
            except RequestFailed as e:
                out.append(e)
        try:  # a 400 (unknown seed here) is not retried
            await pool.chat(MSGS, MODEL, seed=12345)
        except RequestFailed as e:
            out.append(e)
        await pool.aclose()
        return out

    try:
        ok, down, ok2, bad = asyncio.run(go())
    finally:
        stub.stop()
    assert ok.attempts == 2 and ok2.attempts == 1
    assert isinstance(down, RequestFailed) and down.status == 500 and down.attempts == 4
    assert isinstance(bad, RequestFailed) and bad.status == 400 and bad.attempts == 1


@pytest.mark.parametrize("supports_n", ["yes", "reject", "ignore"])
def test_sample_uses_n_where_the_server_takes_it(supports_n):
    stub = Stub(_cases(2), supports_n=supports_n)
    url = stub.start()

    async def go():
        pool = _pool([url])
        got = []
        for p in ("p0", "p1"):
            seeds = [path_seed(0, p, s) for s in range(4)]
            got.append([r async for r in pool.sample(MSGS, MODEL, 4, seeds=seeds)])
        await pool.aclose()
        return got, pool

    try:
        (first, second), pool = asyncio.run(go())
    finally:
        stub.stop()
    for rs in (first, second):
        assert sorted(i for r in rs for i in r.indices) == [0, 1, 2, 3] and all(r.error is None for r in rs)
        texts = {i: c.reasoning for r in rs for i, c in zip(r.indices, r.result.choices)}
        assert all(f"Path {i}:" in texts[i] for i in range(4))  # sample i got slot i's seed
    assert pool.n_support[url] is (supports_n == "yes")
    assert len(second) == (1 if supports_n == "yes" else 4)  # remembered: no n request tried again


def test_concurrency_is_bounded():
    stub = Stub(_cases(12), delay=0.05)
    url = stub.start()
    inflight = {"now": 0, "max": 0}

    class Counting:
        def __init__(self, inner):
            self.inner = inner
            self.chat = self
            self.completions = self

        async def create(self, **kw):
            inflight["now"] += 1
            inflight["max"] = max(inflight["max"], inflight["now"])
            try:
                return await self.inner.chat.completions.create(**kw)
            finally:
                inflight["now"] -= 1

        async def close(self):
            await self.inner.close()

    from parathinker.client import _openai_client

    async def go():
        pool = _pool([url], concurrency=3, client_factory=lambda u, k, t: Counting(_openai_client(u, k, t)))
        await asyncio.gather(*(pool.chat(MSGS, MODEL, seed=path_seed(0, f"p{i}", 0)) for i in range(12)))
        await pool.aclose()

    try:
        asyncio.run(go())
    finally:
        stub.stop()
    assert inflight["max"] == 3


def test_preflight_names_the_problem():
    stub = Stub(_cases(1))
    url = stub.start()

    async def check(urls, model):
        pool = _pool(urls, retry=RetryPolicy(0))
        try:
            await preflight(pool, model)
        finally:
            await pool.aclose()

    try:
        asyncio.run(check([url], MODEL))
        with pytest.raises(ConfigError, match="serves: stub-teacher"):
            asyncio.run(check([url], "other-model"))
        with pytest.raises(ConfigError, match="cannot reach the teacher"):
            asyncio.run(check([f"http://127.0.0.1:{free_port()}"], MODEL))
    finally:
        stub.stop()
