"""``--data-parallel-size``: engine processes behind one server, with the bundled model.

The server runs in this process (uvicorn on a thread) and starts two engine processes (spawned,
each loading the bundled model); an in-process ``LLM`` computes the same requests with
``generate`` (a seeded request's tokens do not depend on which engine runs it, nor on its batch).
The engine process's loop (``_Core``) is also driven here over a pipe, without spawning.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import threading
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
    wait_until,
)

from parathinker import LLM
from parathinker.serve.app import build_app
from parathinker.serve.config import ServeConfig
from parathinker.serve.engine_procs import EngineProcesses, _Core
from parathinker.serve.engine_thread import EngineUnavailable
from parathinker.serve.server import ServerThread


def _start(llm: LLM, **config) -> ServerThread:  # noqa: ANN003
    cfg = ServeConfig(port=0, data_parallel_size=2, **config)
    return ServerThread(build_app(llm, cfg), cfg, log_level="error").start(timeout=300)  # two processes load the model


@pytest.fixture(scope="module")
def served():  # noqa: ANN201
    s = _start(bundled_llm())
    yield s
    s.stop()
    group = s.app.state.server.thread
    assert all(not m.proc.is_alive() for m in group.members)  # the app stopped its processes


def test_same_runs_as_in_process_spread_over_both_processes(served, ref: LLM, problems: list) -> None:  # noqa: ANN001
    group = served.app.state.server.thread
    assert isinstance(group, EngineProcesses) and len(group.members) == 2
    q = problems[3]

    async def go():  # noqa: ANN202
        async with async_client(served) as c:
            return await asyncio.gather(*(
                c.chat.completions.create(model=MODEL, messages=chat(q), n=3, seed=10 * k,
                                          extra_body={"num_paths": 8, "return_paths": True}) for k in range(4)))

    rs = asyncio.run(go())
    dp, ds = ref.default_params()
    for k, r in enumerate(rs):
        expected = ref.generate([q.problem] * 3, replace(dp, num_paths=8), replace(ds, seed=10 * k))
        for ch, e in zip(r.choices, expected):
            m = ch.message.model_dump()
            assert m["content"] == e.summary.text and m["answer"] == e.answer
            assert [p["text"] for p in m["paths"]] == [p.text for p in e.paths]
        assert r.usage.completion_tokens == sum(e.stats["generated_tokens"] for e in expected)
    assert all(m.requests > 0 for m in group.members), [m.requests for m in group.members]


def test_streamed_equals_non_streamed(served, problems: list) -> None:  # noqa: ANN001
    check_streamed_equals_non_streamed(served, problems[5], stream_paths=True)


def test_bad_request_is_400_before_any_process(served, problems: list) -> None:  # noqa: ANN001
    with pytest.raises(openai.BadRequestError) as e:
        client(served).chat.completions.create(model=MODEL, messages=chat(problems[0]),
                                               extra_body={"num_paths": 99})
    assert e.value.body["param"] == "num_paths"


def test_load_a_third_disconnect_then_every_page_free(served, problems: list) -> None:  # noqa: ANN001
    async def one(c, i: int):  # noqa: ANN001, ANN202
        stream = await c.chat.completions.create(model=MODEL, messages=chat(problems[i]), seed=i, stream=True,
                                                 extra_body={"num_paths": 8, "stream_paths": True})
        if i % 3 == 0:  # leaves after its first reasoning piece
            async for ch in stream:
                if any(getattr(x.delta, "reasoning", None) for x in ch.choices):
                    break
            await stream.close()
            return None
        return collect_stream([ch async for ch in stream])["choices"][0]

    async def go():  # noqa: ANN202
        async with async_client(served, timeout=300) as c:
            return await asyncio.gather(*(one(c, i) for i in range(24)), return_exceptions=True)

    results = asyncio.run(go())
    assert not [r for r in results if isinstance(r, BaseException)]
    done = [r for r in results if r is not None]
    assert len(done) == 16 and all(ch["content"] and ch["reasoning"].count("<think") == 8 for ch in done)
    wait_until(lambda: metric(served, "parathinker:num_requests_running") == 0.0)  # the processes' own gauges
    assert metric(served, "parathinker:kv_cache_usage_perc") == 0.0
    assert metric(served, "parathinker:kv_cache_pages_used") == 0.0
    assert served.app.state.server.thread.num_open == 0


def test_a_process_that_dies_turns_the_server_unhealthy(problems: list) -> None:
    s = _start(bundled_llm())
    try:
        group = s.app.state.server.thread
        assert http_status(s.url + "/health") == 200
        c = client(s)
        stream = c.chat.completions.create(model=MODEL, messages=chat(problems[0]), seed=0, stream=True,
                                           extra_body={"num_paths": 8, "stream_paths": True, "max_path_tokens": 512})
        next(iter(stream))  # running
        for m in group.members:
            os.kill(m.proc.pid, signal.SIGKILL)
        with pytest.raises(openai.APIError, match=r"engine process \d exited \(code -9\)"):  # an error event
            collect_stream(stream)
        wait_until(lambda: not group.alive)
        assert http_status(s.url + "/health") == 503
        with pytest.raises(openai.InternalServerError) as e:
            c.chat.completions.create(model=MODEL, messages=chat(problems[1]))
        assert e.value.status_code == 503 and e.value.body["code"] == "engine_unavailable"
    finally:
        s.stop()


def test_a_process_that_cannot_load_says_why() -> None:
    group = EngineProcesses(bundled_llm(), 1)
    group.args.model = "/nonexistent/checkpoint"
    with pytest.raises(EngineUnavailable, match="engine process 0 could not load the model: .*nonexistent"):
        group.start()
    assert not group.alive and not group.members[0].proc.is_alive()


def test_a_process_that_exits_while_loading_says_so() -> None:
    import sys

    from parathinker.serve.engine_procs import _Member

    group = EngineProcesses(bundled_llm(), 1)
    ctx = mp.get_context("spawn")
    m = _Member(0, ctx, group.args)
    m.proc = ctx.Process(target=sys.exit, args=(3,))  # gone before a word
    m.proc.start()
    m._child.close()
    with pytest.raises(EngineUnavailable, match="engine process 0 exited with code 3 while loading"):
        group._wait_ready(m)


def test_core_loop_failed_steps_drop_their_requests_then_stop(problems: list) -> None:
    """The engine process's loop over a pipe, in this process: a failing step is reported per request
    (not fatal), the loop goes on; ``max_failures`` in a row end it (fatal)."""
    llm = bundled_llm()
    dp, ds = llm.default_params()
    spec = llm.request_spec(chat(problems[0]), replace(dp, num_paths=2), replace(ds, seed=0))
    here, there = mp.Pipe()
    core = _Core(llm.engine, there, max_failures=2)
    t = threading.Thread(target=core.run, daemon=True)
    t.start()
    real_step = llm.engine.step

    def recv_until(kind: str):  # noqa: ANN202
        while True:
            assert here.poll(30), f"no {kind!r} message"
            msg = here.recv()
            if msg[0] == kind:
                return msg

    here.send(("add", 7, spec, False))  # one request runs to the end, its deltas under the server's id
    deltas = []
    while not any(d.finished for d in deltas):
        deltas += recv_until("step")[1]
    assert {d.request_id for d in deltas} == {7} and deltas[-1].output.summary.text
    llm.engine.step = lambda: 1 / 0
    here.send(("add", 8, spec, False))
    assert recv_until("failed")[1:] == ([8], "the engine failed on a step: ZeroDivisionError: division by zero", False)
    here.send(("add", 9, spec, False))
    assert recv_until("failed")[1:] == ([9], "the engine failed on a step: ZeroDivisionError: division by zero", True)
    t.join(10)
    assert not t.is_alive()
    llm.engine.step = real_step
    llm.engine.step()  # carries out the aborts the loop left
    assert not llm.engine.has_unfinished() and llm.engine.kv_pages_used == 0


@pytest.mark.parametrize(("cores", "size", "thread"), [(2, 2, False), (4, 2, True), (4, 3, False), (8, 3, True)])
def test_process_settings_a_decode_override_and_a_prefill_thread_only_with_a_core_each(
        monkeypatch, cores: int, size: int, thread: bool) -> None:  # noqa: ANN001
    """The CLI's server LLM skips the decode step's weight copies; its processes get the user's decode settings,
    the prefill thread only where every process has a core beyond its torch thread."""
    import dataclasses

    from parathinker.engine.decode.config import DecodeConfig
    from parathinker.serve import engine_procs

    user = DecodeConfig(attention="cascade")
    llm = LLM(None, threads=1, decode=dataclasses.replace(user, fused_decode=False, packed_weights=False))
    monkeypatch.setattr(engine_procs.os, "cpu_count", lambda: cores)
    args = engine_procs.CoreArgs.of(llm, size, decode_config=user)
    assert args.decode == {**dataclasses.asdict(user), "prefill_thread": thread}
    assert args.threads == 1 and args.model == str(llm.path) and args.device == "cpu"
