"""Servers for the serve tests: the app on uvicorn in a thread, bound to 127.0.0.1 on a free port."""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from parathinker.serve.app import build_app  # noqa: E402
from parathinker.serve.config import ServeConfig  # noqa: E402
from parathinker.serve.server import ServerThread  # noqa: E402

MODEL = "parathinker-pathfind"  # the bundled model's served name


def bundled_llm():  # noqa: ANN201
    from parathinker import LLM

    return LLM(None, device="cpu", threads=1)


@pytest.fixture(scope="module")
def problems() -> list:
    """Held-out pathfind problems for the bundled model."""
    from parathinker.eval.benchmarks import pathfind_default

    return pathfind_default(1000)[-64:]


@pytest.fixture(scope="module")
def ref():  # noqa: ANN201
    """An in-process ``LLM`` over the bundled model: the reference a server's answers must equal."""
    return bundled_llm()


def chat(q) -> list[dict]:  # noqa: ANN001
    """A pathfind problem as chat messages."""
    return [{"role": "user", "content": q.problem}]


def metric(server: ServerThread, name: str) -> float:
    """One sample of ``/metrics`` (the model_name-labelled series ``name``)."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return float(next(x for x in text.splitlines() if x.startswith(name + "{")).split()[-1])


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def wait_until(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


@contextmanager
def running(llm, **config) -> Iterator[ServerThread]:  # noqa: ANN001
    cfg = ServeConfig(port=0, **config)
    with ServerThread(build_app(llm, cfg), cfg, log_level="error") as s:
        yield s


def client(server: ServerThread, **kw):  # noqa: ANN201
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key=kw.pop("api_key", "none"), max_retries=0,
                         timeout=kw.pop("timeout", 60), **kw)


def async_client(server: ServerThread, **kw):  # noqa: ANN201
    import openai

    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=kw.pop("api_key", "none"), max_retries=0,
                              timeout=kw.pop("timeout", 60), **kw)


def collect_stream(chunks) -> dict:  # noqa: ANN001
    """A chat stream folded per choice: content, reasoning (pieces grouped by path, in index order), extras."""
    out: dict[int, dict] = {}
    usage = None
    for ch in chunks:
        d = ch.model_dump() if hasattr(ch, "model_dump") else ch
        if d.get("usage"):
            usage = d["usage"]
        for c in d["choices"]:
            o = out.setdefault(c["index"], {"content": "", "by_path": {}, "finish_reason": None, "extra": {}})
            delta = c.get("delta", c)
            piece = delta.get("content") if "delta" in c else delta.get("text")
            o["content"] += piece or ""
            if delta.get("reasoning"):
                assert delta["reasoning"] == delta["reasoning_content"]
                i = delta["path_index"]
                o["by_path"][i] = o["by_path"].get(i, "") + delta["reasoning"]
            for k in ("answer", "paths", "votes"):
                if delta.get(k) is not None:
                    o["extra"][k] = delta[k]
            if c.get("finish_reason"):
                o["finish_reason"] = c["finish_reason"]
    for o in out.values():
        o["reasoning"] = "".join(o["by_path"][i] for i in sorted(o["by_path"])) or None
    return {"choices": out, "usage": usage}


def check_streamed_equals_non_streamed(server: ServerThread, q, stream_paths: bool) -> None:  # noqa: ANN001
    """The same seeded chat request streamed and not: the same content, reasoning, paths, answer, finish, usage."""
    c = client(server)
    kw = dict(model=MODEL, messages=chat(q), seed=42, extra_body={"return_paths": True, "stream_paths": stream_paths})
    full = c.chat.completions.create(**kw)
    got = collect_stream(c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    s, m = got["choices"][0], full.choices[0].message.model_dump()
    assert s["content"] == m["content"] and s["reasoning"] == m["reasoning"] and m["reasoning"].count("<think") == 8
    assert s["extra"]["paths"] == m["paths"] and s["extra"]["answer"] == m["answer"]
    assert s["finish_reason"] == full.choices[0].finish_reason
    assert got["usage"] == full.usage.model_dump()
