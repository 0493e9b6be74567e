"""``parathinker serve`` with the bundled model, through the real ``openai`` client (sync, async, streaming).

The server runs in this process (uvicorn on a thread, 127.0.0.1, a free port) over its own ``LLM``;
a second ``LLM`` computes the same requests in-process with ``generate`` (the independent
reference: a seeded request's tokens do not depend on what shares its batch). Pathfind answers are
checked by the task's exact verifier.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from dataclasses import replace

import openai
import pytest
from conftest import (
    MODEL,
    async_client,
    bundled_llm,
    chat,
    check_streamed_equals_non_streamed,
    client,
    collect_stream,
    http_status,
    metric,
    running,
    wait_until,
)

from parathinker import LLM


@pytest.fixture(scope="module")
def served():  # noqa: ANN201
    llm = bundled_llm()
    with running(llm) as s:
        yield s, llm


def _generate(ref: LLM, prompts: list, seed: int, **parallel):  # noqa: ANN003, ANN202
    dp, ds = ref.default_params()
    return ref.generate(prompts, replace(dp, **parallel), replace(ds, seed=seed))


def test_solves_pathfind_with_8_paths(served, ref: LLM, problems: list) -> None:  # noqa: ANN001
    server, _ = served
    c = client(server)
    qs = problems[:4]
    expected = [_generate(ref, [q.problem], seed=i, num_paths=8)[0] for i, q in enumerate(qs)]
    right = 0
    for i, (q, e) in enumerate(zip(qs, expected)):
        r = c.chat.completions.create(model=MODEL, messages=chat(q), seed=i, extra_body={"num_paths": 8, "return_paths": True})
        m = r.choices[0].message.model_dump()
        assert m["content"] == e.summary.text and m["answer"] == e.answer  # the same run as in-process
        assert [(p["index"], p["text"], p["finish_reason"]) for p in m["paths"]] == [
            (p.index, p.text, p.finish_reason) for p in e.paths]
        assert r.usage.prompt_tokens == len(e.prompt_token_ids)
        assert r.usage.completion_tokens == e.stats["generated_tokens"]
        right += q.check(m["answer"])
    assert right >= 3, f"{right}/4 solved"  # the bundled model at P=8: ~0.9 on this set


@pytest.mark.parametrize("stream_paths", [False, True])
def test_streamed_equals_non_streamed(served, problems: list, stream_paths: bool) -> None:  # noqa: ANN001
    check_streamed_equals_non_streamed(served[0], problems[5], stream_paths)


def test_async_client_n3(served, ref: LLM, problems: list) -> None:  # noqa: ANN001
    server, _ = served
    q = problems[7]

    async def go():  # noqa: ANN202
        async with async_client(server) as c:
            return await c.chat.completions.create(model=MODEL, messages=chat(q), n=3, seed=9, extra_body={"num_paths": 4})

    r = asyncio.run(go())
    expected = _generate(ref, [q.problem] * 3, seed=9, num_paths=4)  # generate seeds prompt i with seed + i
    assert [ch.message.content for ch in r.choices] == [e.summary.text for e in expected]
    assert r.usage.prompt_tokens == len(expected[0].prompt_token_ids)  # the prompt once
    assert r.usage.completion_tokens == sum(e.stats["generated_tokens"] for e in expected)


def test_majority_mode(served, ref: LLM, problems: list) -> None:  # noqa: ANN001
    server, _ = served
    q = problems[9]
    r = client(server).chat.completions.create(model=MODEL, messages=chat(q), seed=3,
                                               extra_body={"mode": "majority", "num_paths": 4, "return_paths": True})
    (e,) = _generate(ref, [q.problem], seed=3, mode="majority", num_paths=4)
    m = r.choices[0].message.model_dump()
    assert m["votes"] == e.votes and m["answer"] == e.answer and len(m["paths"]) == 4
    assert m["content"] == (f"\\boxed{{{e.answer}}}" if e.answer else "")


def test_completions_endpoint_raw_prompt(served, ref: LLM, problems: list) -> None:  # noqa: ANN001
    server, _ = served
    q = problems[11]
    text = ref.format_prompt(q.problem)  # completions send the prompt as is: give it the chat-formatted text
    r = client(server).completions.create(model=MODEL, prompt=text, seed=1, extra_body={"num_paths": 4})
    (e,) = _generate(ref, [ref.encode_prompt(text, raw=True)], seed=1, num_paths=4)
    assert r.choices[0].text == e.summary.text


REQUEST_FLAGS = ("--paths", "--termination", "--max-path-tokens", "--summary-max-tokens", "--mode", "--temperature",
                 "--top-p", "--kv-cache-memory")


@pytest.mark.parametrize(("body", "param", "code", "says"), [
    ({"extra_body": {"num_paths": 0}}, "num_paths", "invalid_value", "num_paths must be >= 1"),
    ({"extra_body": {"num_paths": 9}}, "num_paths", "invalid_value", "num_paths=9 but"),  # <think1>..<think8>
    ({"extra_body": {"num_paths": 4, "termination": 5}}, "termination", "invalid_value",
     "termination=5 needs 5 finished paths, more than num_paths=4"),
    ({"temperature": -1}, "temperature", "invalid_value", "temperature must be >= 0"),
    ({"messages": []}, "messages", "invalid_value", ""),
    ({"messages": [{"role": "user", "content": "10 > 11 , " * 600}]}, "messages", "context_length_exceeded",
     "the model's context is 2048"),
    ({"extra_body": {"max_path_tokens": 4000}}, "messages", "context_length_exceeded",
     "lower max_path_tokens / summary_max_tokens"),
])
def test_bad_requests_are_400(served, body: dict, param: str, code: str, says: str) -> None:  # noqa: ANN001
    """One line that names what an HTTP client can change (its fields), never a command-line flag."""
    server, _ = served
    kw = {"model": MODEL, "messages": [{"role": "user", "content": "graph : 10 > 11 ; find path 10 to 11"}], **body}
    with pytest.raises(openai.BadRequestError) as e:
        client(server).chat.completions.create(**kw)
    err = e.value.body
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param and err["code"] == code
    assert "\n" not in err["message"] and says in err["message"], err["message"]
    assert not any(flag in err["message"] for flag in REQUEST_FLAGS), err["message"]


def test_unknown_model_is_404(served) -> None:  # noqa: ANN001
    server, _ = served
    with pytest.raises(openai.NotFoundError) as e:
        client(server).chat.completions.create(model="ParaThinker-1.5B", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found"


def test_401_429_503_with_the_real_engine(problems: list) -> None:
    """A gate in front of the engine's step holds requests in its queue (num_waiting counts them)."""
    llm = bundled_llm()
    gate = threading.Event()
    real_step = llm.engine.step

    def gated_step():  # noqa: ANN202
        gate.wait()
        return real_step()

    llm.engine.step = gated_step
    msg = chat(problems[0])
    with running(llm, api_key="k", max_waiting=2) as s:
        with pytest.raises(openai.AuthenticationError) as e:
            client(s, api_key="wrong").chat.completions.create(model=MODEL, messages=msg)
        assert e.value.body["code"] == "invalid_api_key"
        c = client(s, api_key="k")
        held = [c.chat.completions.create(model=MODEL, messages=msg, stream=True) for _ in range(2)]
        wait_until(lambda: llm.engine.num_waiting == 2)
        with pytest.raises(openai.RateLimitError) as e:
            c.chat.completions.create(model=MODEL, messages=msg)
        assert e.value.body["code"] == "rate_limit_exceeded"
        gate.set()
        for st in held:
            assert collect_stream(st)["choices"][0]["content"]
        llm.engine.step = lambda: 1 / 0  # every step fails from now on: after 3 in a row the engine is dead
        with pytest.raises(openai.APIError, match="engine failed"):  # mid-stream: an error event
            collect_stream(c.chat.completions.create(model=MODEL, messages=msg, stream=True))
        wait_until(lambda: not s.app.state.server.thread.alive)
        assert http_status(s.url + "/health") == 503
        with pytest.raises(openai.InternalServerError) as e:
            c.chat.completions.create(model=MODEL, messages=msg)
        assert e.value.status_code == 503 and e.value.body["code"] == "engine_unavailable"


def _load(server, llm: LLM, problems: list, clients: int) -> None:  # noqa: ANN001
    """``clients`` concurrent streams; every third disconnects mid-stream (during its paths or its summary)."""

    async def one(c, i: int):  # noqa: ANN001, ANN202
        q = problems[i % len(problems)]
        stream = await c.chat.completions.create(model=MODEL, messages=chat(q), seed=i, stream=True,
                                                 extra_body={"num_paths": 8, "stream_paths": True})
        if i % 3 == 0:
            want = "reasoning" if i % 2 == 0 else "content"
            async for ch in stream:
                if any(getattr(x.delta, want, None) for x in ch.choices):
                    break
            await stream.close()
            return None
        chunks = [ch async for ch in stream]
        return q, collect_stream(chunks)["choices"][0]

    async def go():  # noqa: ANN202
        async with async_client(server, timeout=300) as c:
            return await asyncio.gather(*(one(c, i) for i in range(clients)), return_exceptions=True)

    results = asyncio.run(go())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    done = [r for r in results if r is not None]
    assert len(done) == clients - len(range(0, clients, 3))
    for _, ch in done:
        assert ch["finish_reason"] in ("stop", "length") and ch["content"]
        assert ch["reasoning"].count("<think") == 8 and ch["extra"]["answer"] == q_answer(ch)
    solved = sum(q.check(ch["extra"]["answer"]) for q, ch in done)
    assert solved >= 0.6 * len(done), f"{solved}/{len(done)}"
    wait_until(lambda: not llm.engine.has_unfinished())
    assert llm.engine.kv_pages_used == 0 and llm.engine.num_running == 0 and llm.engine.num_waiting == 0
    assert metric(server, "parathinker:kv_cache_usage_perc") == 0.0
    assert metric(server, "parathinker:num_requests_running") == 0.0
    assert server.app.state.server.thread.num_open == 0


def q_answer(ch: dict) -> str | None:
    from parathinker.answers import last_boxed

    return last_boxed(ch["content"]) or None


def test_load_64_streams_a_third_disconnect(served, problems: list) -> None:  # noqa: ANN001
    server, llm = served
    aborted = metric(server, "parathinker:request_aborted_total")
    _load(server, llm, problems, 64)
    # the clients that left while their paths ran (11 of the 22 that leave) were aborted, not run to the end
    assert metric(server, "parathinker:request_aborted_total") - aborted >= 11


def test_models_lists_the_checkpoint(served) -> None:  # noqa: ANN001
    server, _ = served
    with urllib.request.urlopen(server.url + "/v1/models", timeout=10) as r:
        data = json.loads(r.read())["data"]
    assert [m["id"] for m in data] == [MODEL] and data[0]["max_paths"] == 8 and data[0]["max_model_len"] == 2048
