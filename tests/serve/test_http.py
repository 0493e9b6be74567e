"""The HTTP layer against a scripted engine (tests/serve/fake_engine.py) that implements the step API.

Deterministic cases the real model cannot force: requests held waiting (429), an engine that fails
mid-run (503, error event), exact token accounting. The real model's tests: test_serve_model.py.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request

import openai
import pytest
from conftest import client, collect_stream, running
from fake_engine import FakeEngine, FakeLLM

MODEL = "parathinker-pathfind"
MSG = [{"role": "user", "content": "find the way"}]


def _raw(server, path: str, body: object | None = None, headers: dict | None = None, data: bytes | None = None):  # noqa: ANN001, ANN202
    req = urllib.request.Request(server.url + path, data=data if data is not None else (
        json.dumps(body).encode() if body is not None else None), headers={"Content-Type": "application/json",
                                                                            **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _assert_error(body: str, code: str) -> dict:
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code and err["message"] and "Traceback" not in err["message"]
    return err


def _wait(cond, timeout: float = 10.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def server():  # noqa: ANN201
    with running(FakeLLM()) as s:
        yield s


def test_chat_fields_and_usage(server) -> None:  # noqa: ANN001
    r = client(server).chat.completions.create(model=MODEL, messages=MSG, seed=3, extra_body={"return_paths": True})
    (c,) = r.choices
    m = c.message.model_dump()
    assert m["content"].endswith("\\boxed{3}") and m["answer"] == "3" and c.finish_reason == "stop"
    paths = m["paths"]
    assert [p["index"] for p in paths] == [1, 2, 3, 4]
    assert m["reasoning"] == m["reasoning_content"] == "".join(
        f"<think{p['index']}>{p['text']}</think{p['index']}>\n" for p in paths)
    assert {p["finish_reason"] for p in paths} <= {"end", "cut"}
    u = r.usage
    path_tokens = sum(p["tokens"] for p in paths)
    assert u.completion_tokens_details.reasoning_tokens == path_tokens
    assert u.completion_tokens == path_tokens + 3  # the fake's summary: 3 generated tokens after its prefix
    assert u.prompt_tokens == 3 and u.total_tokens == u.prompt_tokens + u.completion_tokens


@pytest.mark.parametrize("stream_paths", [False, True])
def test_stream_equals_non_stream(server, stream_paths: bool) -> None:  # noqa: ANN001
    c = client(server)
    kw = dict(model=MODEL, messages=MSG, seed=11, n=2, extra_body={"stream_paths": stream_paths, "return_paths": True})
    full = c.chat.completions.create(**kw)
    got = collect_stream(c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    for ch in full.choices:
        s = got["choices"][ch.index]
        m = ch.message.model_dump()
        assert s["content"] == m["content"] and s["reasoning"] == m["reasoning"]
        assert s["finish_reason"] == ch.finish_reason and s["extra"]["paths"] == m["paths"]
    assert got["usage"] == full.usage.model_dump()


def test_n_choices_are_independent_runs(server) -> None:  # noqa: ANN001
    r = client(server).chat.completions.create(model=MODEL, messages=MSG, seed=20, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.message.model_dump()["answer"] for c in r.choices] == ["20", "21", "22"]  # seed + i, like generate


def test_majority_and_sequential_modes(server) -> None:  # noqa: ANN001
    c = client(server)
    m = c.chat.completions.create(model=MODEL, messages=MSG, seed=5, extra_body={"mode": "majority", "num_paths": 3})
    msg = m.choices[0].message.model_dump()
    assert msg["content"] == "\\boxed{5}" and msg["votes"] == {"5": 3} and msg["reasoning"].count("<think") == 3
    s = c.chat.completions.create(model=MODEL, messages=MSG, seed=5, extra_body={"mode": "sequential"})
    msg = s.choices[0].message.model_dump()
    assert msg["reasoning"] is None and msg["content"].startswith(" w1.1")
    assert s.usage.completion_tokens_details.reasoning_tokens == 0


def test_stop_string_cuts_the_content_and_aborts(server) -> None:  # noqa: ANN001
    c = client(server)
    full = c.chat.completions.create(model=MODEL, messages=MSG, seed=7).choices[0].message.content
    r = c.chat.completions.create(model=MODEL, messages=MSG, seed=7, stop=["boxed"])
    assert r.choices[0].message.content == full[: full.index("boxed")] and r.choices[0].finish_reason == "stop"
    got = collect_stream(c.chat.completions.create(model=MODEL, messages=MSG, seed=7, stop="boxed", stream=True))
    assert got["choices"][0]["content"] == full[: full.index("boxed")]


def test_completions_endpoint(server) -> None:  # noqa: ANN001
    c = client(server)
    r = c.completions.create(model=MODEL, prompt=["one two", "three"], seed=1, n=2, extra_body={"num_paths": 2})
    assert [ch.index for ch in r.choices] == [0, 1, 2, 3]
    assert [ch.model_dump()["answer"] for ch in r.choices] == ["1", "2", "1", "2"]
    assert r.usage.prompt_tokens == 3  # once per prompt, not per choice
    got = collect_stream(c.completions.create(model=MODEL, prompt="one two", seed=1, stream=True))
    assert got["choices"][0]["content"] == r.choices[0].text


def test_unknown_fields_ignored(server) -> None:  # noqa: ANN001
    status, body = _raw(server, "/v1/chat/completions", {"model": MODEL, "messages": MSG, "seed": 2,
                                                         "presence_penalty": 0.5, "logit_bias": {}, "user": "u"})
    assert status == 200 and json.loads(body)["choices"][0]["message"]["answer"] == "2"


@pytest.mark.parametrize(("body", "param"), [
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"num_paths": 0}, "num_paths"),
    ({"num_paths": 9}, "num_paths"),  # more paths than the tokenizer's think tokens
    ({"termination": "most"}, "termination"),
    ({"mode": "vote"}, "mode"),
    ({"n": 0}, "n"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "x " * 80}]}, "messages"),  # too long for the context
    ({"max_tokens": 0}, "summary_max_tokens"),
    ({"num_paths": "many"}, "num_paths"),
])
def test_bad_parameters_are_400(server, body: dict, param: str) -> None:  # noqa: ANN001
    status, text = _raw(server, "/v1/chat/completions", {"model": MODEL, "messages": MSG, **body})
    assert status == 400, text
    err = _assert_error(text, json.loads(text)["error"]["code"])
    assert err["type"] == "invalid_request_error" and err["param"] == param, err


def test_malformed_json_is_400(server) -> None:  # noqa: ANN001
    status, text = _raw(server, "/v1/chat/completions", data=b"{not json")
    assert status == 400
    _assert_error(text, "invalid_value")


def test_unknown_model_is_404(server) -> None:  # noqa: ANN001
    with pytest.raises(openai.NotFoundError) as e:
        client(server).chat.completions.create(model="gpt-5", messages=MSG)
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"


def test_api_key() -> None:
    with running(FakeLLM(), api_key="sesame") as s:
        for key in ("wrong", "none"):
            with pytest.raises(openai.AuthenticationError) as e:
                client(s, api_key=key).chat.completions.create(model=MODEL, messages=MSG)
            assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
        assert client(s, api_key="sesame").chat.completions.create(model=MODEL, messages=MSG).choices
        assert _raw(s, "/health")[0] == 200  # probes need no key


def test_429_when_too_many_wait() -> None:
    eng = FakeEngine()
    eng.hold = True
    with running(FakeLLM(eng), max_waiting=2) as s:
        conns = []
        for _ in range(2):  # two requests wait (held), their clients waiting too
            h = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
            h.request("POST", "/v1/chat/completions", json.dumps({"model": MODEL, "messages": MSG}),
                      {"Content-Type": "application/json"})
            conns.append(h)
        _wait(lambda: eng.num_waiting == 2)
        with pytest.raises(openai.RateLimitError) as e:
            client(s).chat.completions.create(model=MODEL, messages=MSG)
        assert e.value.body["code"] == "rate_limit_exceeded"
        eng.hold = False
        s.app.state.server.thread._wake.set()
        for h in conns:
            assert h.getresponse().status == 200


def test_failed_steps_are_500_then_503_when_dead() -> None:
    eng = FakeEngine()
    with running(FakeLLM(eng)) as s:
        assert _raw(s, "/health")[0] == 200
        eng.hold = True
        stream = client(s).chat.completions.create(model=MODEL, messages=MSG, stream=True)
        first = next(iter(stream))  # the role chunk: the stream has started
        assert first.choices[0].delta.role == "assistant"
        eng.fail = True
        eng.hold = False
        s.app.state.server.thread._wake.set()
        with pytest.raises(openai.APIError, match="engine failed"):  # an error event, then [DONE]
            for _ in stream:
                pass
        status, text = _raw(s, "/v1/chat/completions", {"model": MODEL, "messages": MSG})
        assert status == 500  # this request dropped; the engine goes on
        assert _assert_error(text, "engine_error")["type"] == "internal_server_error"
        assert _raw(s, "/health")[0] == 200
        status, text = _raw(s, "/v1/chat/completions", {"model": MODEL, "messages": MSG})
        assert status == 503  # the third failed step in a row: the engine is dead
        _assert_error(text, "engine_unavailable")
        _wait(lambda: not s.app.state.server.thread.alive)
        assert _raw(s, "/health")[0] == 503
        with pytest.raises(openai.InternalServerError) as e:
            client(s).chat.completions.create(model=MODEL, messages=MSG)
        assert e.value.status_code == 503 and e.value.body["code"] == "engine_unavailable"


def test_disconnect_aborts() -> None:
    eng = FakeEngine()
    with running(FakeLLM(eng)) as s:
        eng.hold = True  # requests stay queued until the client is gone
        stream = client(s).chat.completions.create(model=MODEL, messages=MSG, stream=True)
        next(iter(stream))
        stream.close()
        _wait(lambda: len(eng.aborted) == 1)
        h = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)  # not streamed
        h.request("POST", "/v1/chat/completions", json.dumps({"model": MODEL, "messages": MSG, "n": 2}),
                  {"Content-Type": "application/json"})
        _wait(lambda: eng.num_waiting == 2)
        h.close()
        _wait(lambda: len(eng.aborted) == 3)
        assert not eng.has_unfinished() and s.app.state.server.thread.num_open == 0


def test_metrics_and_models(server) -> None:  # noqa: ANN001
    c = client(server)
    c.chat.completions.create(model=MODEL, messages=MSG, seed=1)
    status, text = _raw(server, "/metrics")
    assert status == 200
    for name in ("parathinker:num_requests_running", "parathinker:num_requests_waiting",
                 "parathinker:kv_cache_usage_perc", "parathinker:prompt_tokens_total",
                 "parathinker:generation_tokens_total", "parathinker:time_to_first_token_seconds_bucket",
                 "parathinker:e2e_request_latency_seconds_count"):
        assert name in text, name
    line = next(x for x in text.splitlines() if x.startswith("parathinker:kv_cache_usage_perc{"))
    assert float(line.split()[-1]) == 0.0
    assert [m.id for m in c.models.list().data] == [MODEL]


def test_kv_usage_is_over_the_pages_requests_may_have() -> None:
    """A growable CPU pool: 10 pages used of 20 now, of 100 it may grow to -> 0.1, not 0.5."""
    from types import SimpleNamespace

    from parathinker.serve.metrics import ServerMetrics

    e = SimpleNamespace(num_running=2, num_waiting=0, kv_pages_used=10, kv_pages_total=20, kv_pages_capacity=100)
    m = ServerMetrics(e, "m")
    m.render()
    get = m.registry.get_sample_value
    assert get("parathinker:kv_cache_usage_perc", {"model_name": "m"}) == 0.1
    assert get("parathinker:kv_cache_pages_total", {"model_name": "m"}) == 20
