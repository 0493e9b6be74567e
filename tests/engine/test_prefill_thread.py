"""The prefill thread: prompts admitted while others run, and running requests' multi-token chunks (a
summary's forced opening), run beside the step's decode.

The property a user relies on: it changes when a request starts, never what it generates. Each test
compares against the same engine with the thread off, or against the request run alone, and checks
that every page comes back however the prefill ends (joined, aborted meanwhile, failed).
"""

from __future__ import annotations

import threading

import pytest
from scenarios import logprobs, mixed_specs, outcome
from test_step_api import drive, finished_output, from_output, solo

from parathinker import LLM, CacheConfig, DecodeConfig
from parathinker.engine import engine as engine_mod


@pytest.fixture
def llm(tiny_qwen2) -> LLM:  # noqa: ANN001
    llm = LLM(tiny_qwen2, dtype="float32", cache=CacheConfig(num_pages=512, page_size=4))
    llm.engine.prefill_thread = True  # whatever torch's thread count in this test process
    return llm


def _on_thread(eng, monkeypatch) -> list[tuple[int, int]]:  # noqa: ANN001
    """Spy: per forward on the prefill thread, (prompts, chunks after a context) it ran."""
    real, seen = eng.runner.prefill, []

    def prefill(chunks):  # noqa: ANN001, ANN202
        if threading.current_thread() is not threading.main_thread():
            after = sum(sum(r.length for r in c.reads) > len(c.tokens) for c in chunks)
            seen.append((len(chunks) - after, after))
        return real(chunks)

    monkeypatch.setattr(eng.runner, "prefill", prefill)
    return seen


def test_requests_prefilled_on_the_thread_get_the_tokens_of_a_synchronous_engine(llm: LLM, tiny_qwen2,
                                                                                  monkeypatch) -> None:  # noqa: ANN001
    specs = mixed_specs()  # every mode: a re-prefill summary, majority, sequential, cuts
    schedule = {0: specs[:1], 2: specs[1:3], 3: specs[3:4], 5: specs[4:5], 9: specs[5:]}
    eng = llm.engine
    seen = _on_thread(eng, monkeypatch)
    got = drive(eng, schedule)
    assert eng.thread_prefills == len(seen) >= 3  # the requests joining mid-run went through the thread
    assert sum(p for p, _ in seen) >= 3 and sum(a for _, a in seen) >= 2  # prompts, and summaries' openings
    assert eng.pool.num_free == eng.pool.usable_pages and not eng.prefilling

    sync = LLM(tiny_qwen2, dtype="float32", cache=CacheConfig(num_pages=512, page_size=4),
               decode=DecodeConfig(prefill_thread=False)).engine
    assert not sync.prefill_thread
    want = drive(sync, schedule)
    assert sync.thread_prefills == 0
    outs, refs = [finished_output(d) for d in got.values()], [finished_output(d) for d in want.values()]
    assert [from_output(o) for o in outs] == [from_output(o) for o in refs]
    lp = [x for o in outs for p in o.paths for x in p.logprobs]
    ref = [x for o in refs for p in o.paths for x in p.logprobs]
    assert len(lp) == len(ref) and max(abs(x - y) for x, y in zip(lp, ref)) <= 1e-5  # other batch neighbours


def test_engine_run_with_the_thread_equals_it_without(llm: LLM) -> None:
    eng = llm.engine
    free = eng.pool.num_free
    specs = mixed_specs()
    eng.run(specs[:2])  # warm
    on = eng.run(specs)
    eng.prefill_thread = False
    off = eng.run(specs)
    assert outcome(on) == outcome(off)
    assert max(abs(x - y) for x, y in zip(logprobs(on), logprobs(off))) <= 1e-5
    assert eng.pool.num_free == free


def _slow_prefills(eng, monkeypatch, gate: threading.Event) -> list[str]:  # noqa: ANN001
    """Prefills on the prefill thread wait for ``gate``; returns the names of the threads that prefilled."""
    real, seen = eng.runner.prefill, []

    def prefill(chunks):  # noqa: ANN001, ANN202
        seen.append(threading.current_thread().name)
        if threading.current_thread() is not threading.main_thread():
            assert gate.wait(30)
        return real(chunks)

    monkeypatch.setattr(eng.runner, "prefill", prefill)
    return seen


def test_an_abort_while_the_prompt_is_on_the_thread_frees_its_pages_once_written(llm: LLM, monkeypatch) -> None:  # noqa: ANN001
    eng = llm.engine
    a, b = mixed_specs()[0], mixed_specs()[1]
    alone = solo(llm, a)
    gate = threading.Event()
    seen = _slow_prefills(eng, monkeypatch, gate)
    ra = eng.add_request(a)
    deltas = eng.step()  # alone: its prompt in the step
    rb = eng.add_request(b)
    deltas += eng.step()  # b's prompt goes to the thread, which waits at the gate
    assert [r.id for r in eng.prefilling] == [rb] and eng.num_running == 2
    assert seen[-1].startswith("parathinker-prefill")
    assert eng.abort(rb)
    threading.Timer(0.3, gate.set).start()  # the abort waits for the thread to be done with b's pages
    while eng.has_unfinished():
        deltas += eng.step()
    assert {d.request_id for d in deltas} == {ra}  # nothing of b after its abort (it never started)
    assert from_output(finished_output([d for d in deltas if d.request_id == ra])) == alone
    assert eng.pool.num_free == eng.pool.usable_pages and not eng.prefilling


def test_a_prefill_that_fails_on_the_thread_fails_the_step_and_frees_every_page(llm: LLM, monkeypatch) -> None:  # noqa: ANN001
    eng = llm.engine
    a, b = mixed_specs()[0], mixed_specs()[1]
    alone = solo(llm, b)
    real = eng.runner.prefill

    def prefill(chunks):  # noqa: ANN001, ANN202
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("out of memory in the prefill")
        return real(chunks)

    monkeypatch.setattr(eng.runner, "prefill", prefill)
    eng.add_request(a)
    eng.step()
    eng.add_request(b)
    with pytest.raises(RuntimeError, match="out of memory in the prefill"):
        for _ in range(50):  # the launch's step, then the step that joins it raises
            eng.step()
    assert not eng.has_unfinished() and not eng.prefilling and eng.num_running == 0
    assert eng.pool.num_free == eng.pool.usable_pages
    monkeypatch.setattr(eng.runner, "prefill", real)
    assert solo(llm, b) == alone  # the engine goes on


def test_off_where_torch_takes_every_core(tiny_qwen2, monkeypatch) -> None:  # noqa: ANN001
    import torch

    monkeypatch.setattr(engine_mod.os, "cpu_count", lambda: torch.get_num_threads())
    assert not LLM(tiny_qwen2, cache=CacheConfig(num_pages=64, page_size=4)).engine.prefill_thread
    monkeypatch.setattr(engine_mod.os, "cpu_count", lambda: torch.get_num_threads() + 1)
    assert LLM(tiny_qwen2, cache=CacheConfig(num_pages=64, page_size=4)).engine.prefill_thread
    off = LLM(tiny_qwen2, cache=CacheConfig(num_pages=64, page_size=4), decode=DecodeConfig(prefill_thread=False))
    assert not off.engine.prefill_thread


def test_an_abort_while_a_summary_opening_is_on_the_thread(llm: LLM, monkeypatch) -> None:  # noqa: ANN001
    """A request whose paths are done sends its summary's forced opening to the thread while another
    decodes; aborted meanwhile, it yields nothing more, the other gets its solo tokens, every page comes back."""
    from parathinker import ParallelParams, SamplingParams
    from parathinker.engine.sequence import RequestSpec

    eng = llm.engine
    a = RequestSpec([5, 6, 7], ParallelParams(num_paths=2, max_path_tokens=3, summary_max_tokens=4),
                    SamplingParams(seed=1), [30, 31])
    b = RequestSpec([8, 9], ParallelParams(num_paths=2, max_path_tokens=40, summary_max_tokens=4),
                    SamplingParams(seed=2), [30, 31])
    alone = solo(llm, b)
    gate, real = threading.Event(), eng.runner.prefill

    def prefill(chunks):  # noqa: ANN001, ANN202 - a summary's opening on the thread waits for the gate
        if threading.current_thread() is not threading.main_thread() and any(
                sum(r.length for r in c.reads) > len(c.tokens) for c in chunks):
            assert gate.wait(30)
        return real(chunks)

    monkeypatch.setattr(eng.runner, "prefill", prefill)
    rb = eng.add_request(b)
    deltas = eng.step()
    ra = eng.add_request(a)
    for _ in range(20):  # a's prompt (on the thread), its 3-token paths, then its summary's opening
        deltas += eng.step()
        if any(r.id == ra and r.phase == "summary" for r in eng.prefilling):
            break
    else:
        raise AssertionError("a's summary opening never went to the prefill thread")
    assert eng.abort(ra)
    threading.Timer(0.3, gate.set).start()
    cut = len(deltas)
    while eng.has_unfinished():
        deltas += eng.step()
    assert ra not in {d.request_id for d in deltas[cut:]}
    assert from_output(finished_output([d for d in deltas if d.request_id == rb])) == alone
    assert eng.pool.num_free == eng.pool.usable_pages and not eng.prefilling
