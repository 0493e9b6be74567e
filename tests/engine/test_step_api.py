"""The engine's step API: requests join and leave between steps; streams add up to the outputs.

Every comparison is against the same request run alone (``Engine.run([spec])``): a request's
tokens must not depend on what else shares its batch, when it joined, or what was aborted.
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict

import pytest
from scenarios import all_seqs, mixed_specs

from parathinker import LLM, CacheConfig, ParallelParams, SamplingParams
from parathinker.engine.outputs import RequestDelta
from parathinker.engine.sequence import RequestSpec
from parathinker.errors import OutOfPagesError

PATHFIND = ("graph : 19 > 72 , 73 > 48 , 77 > 49 , 96 > 98 , 52 > 73 , 52 > 77 , 19 > 26 , 62 > 96 , 77 > 62 , "
            "35 > 45 , 93 > 10 , 48 > 57 , 49 > 51 , 48 > 93 , 52 > 35 , 45 > 19 ; find path 52 to 57")


@pytest.fixture(scope="module")
def tiny(tiny_qwen2) -> LLM:  # noqa: ANN001
    return LLM(tiny_qwen2, dtype="float32", cache=CacheConfig(num_pages=512, page_size=4))


@pytest.fixture(scope="module")
def bundled() -> LLM:
    return LLM(None, threads="auto")


def solo(llm: LLM, spec: RequestSpec) -> list:
    (req,) = llm.engine.run([spec])
    return [(s.role, s.body, s.finish_reason) for s in all_seqs(req)]


def from_output(out) -> list:  # noqa: ANN001
    kinds = {"parathinker": "path", "reprefill": "path", "majority": "sample", "sequential": "sample"}
    seqs = [(kinds[out.mode], p.token_ids, p.finish_reason) for p in out.paths]
    if out.summary is not None:
        seqs.append(("reprefill" if out.mode == "reprefill" else "summary", out.summary.token_ids,
                     out.summary.finish_reason))
    return seqs


def drive(engine, schedule: dict[int, list], max_steps: int = 10_000) -> dict[int, list[RequestDelta]]:  # noqa: ANN001
    """Step until idle; before step k, add the specs ``schedule[k]`` (their ids become the keys of the result)."""
    deltas: dict[int, list[RequestDelta]] = defaultdict(list)
    for k in range(max_steps):
        for spec in schedule.get(k, []):
            deltas[engine.add_request(spec)]  # noqa: B018 - registers the id
        if not engine.has_unfinished() and k > max(schedule):
            return deltas
        for d in engine.step():
            deltas[d.request_id].append(d)
    raise AssertionError("the engine did not finish")


def finished_output(ds: list[RequestDelta]):  # noqa: ANN201
    ends = [d for d in ds if d.finished]
    assert len(ends) == 1 and ends[0] is ds[-1]
    return ends[0].output


def test_requests_joining_mid_decode_get_their_solo_tokens(tiny: LLM) -> None:
    specs = mixed_specs()  # every mode, greedy and seeded sampling, cuts, a re-prefill summary
    alone = [solo(tiny, s) for s in specs]
    free = tiny.engine.pool.num_free
    got = drive(tiny.engine, {0: specs[:1], 2: specs[1:3], 3: specs[3:4], 5: specs[4:5], 9: specs[5:]})
    outs = [finished_output(ds) for ds in got.values()]
    assert [from_output(o) for o in outs] == alone
    assert tiny.engine.pool.num_free == free and tiny.engine.kv_pages_used == 0


def test_bundled_request_joins_while_another_is_in_its_summary(bundled: LLM) -> None:
    pp = ParallelParams(num_paths=8, max_path_tokens=128, summary_max_tokens=48)
    specs = [bundled.request_spec(PATHFIND, pp, SamplingParams(temperature=1.0, top_p=1.0, seed=s)) for s in (1, 2)]
    majority = bundled.request_spec(PATHFIND, ParallelParams(mode="majority", num_paths=4, max_path_tokens=64),
                                    SamplingParams(temperature=1.0, seed=3))
    alone = [solo(bundled, s) for s in [*specs, majority]]
    eng = bundled.engine
    a = eng.add_request(specs[0])
    seen_summary = False
    while not seen_summary:  # step until the first request is writing its summary, then the others join
        seen_summary = any(d.part == "summary" and d.token_ids for d in eng.step())
    b, c = eng.add_request(specs[1]), eng.add_request(majority)
    got: dict[int, list[RequestDelta]] = defaultdict(list)
    while eng.has_unfinished():
        for d in eng.step():
            got[d.request_id].append(d)
    assert from_output(finished_output(got[b])) == alone[1]
    assert from_output(finished_output(got[c])) == alone[2]
    assert got[a][-1].finished and from_output(got[a][-1].output) == alone[0]
    assert finished_output(got[b]).answer == "52 73 48 57"


def test_streamed_pieces_add_up_to_the_output_text(bundled: LLM) -> None:
    rid = bundled.add_request(PATHFIND, ParallelParams(num_paths=8, max_path_tokens=128, summary_max_tokens=48),
                              SamplingParams(temperature=1.0, seed=0))
    text: dict[tuple[str, int], str] = defaultdict(str)
    reasons: dict[tuple[str, int], str] = {}
    out = None
    while bundled.engine.has_unfinished():
        for d in bundled.engine.step():
            assert d.request_id == rid
            text[d.part, d.index] += d.text
            if d.finish_reason:
                assert (d.part, d.index) not in reasons
                reasons[d.part, d.index] = d.finish_reason
            out = d.output if d.finished else out
    assert out is not None and out.prompt == PATHFIND
    assert {i: text["path", i] for i in range(1, 9)} == {p.index: p.text for p in out.paths}
    assert text["summary", 0] == out.summary.text and out.summary.text.startswith(out.summary.prefix)
    assert {i: reasons["path", i] for i in range(1, 9)} == {p.index: p.finish_reason for p in out.paths}
    assert reasons["summary", 0] == out.summary.finish_reason


@pytest.mark.parametrize("mode", ["parathinker", "majority"])
def test_unstreamed_paths_come_at_their_first_token_and_their_end(bundled: LLM, mode: str) -> None:
    """``stream_paths=False``: a path's deltas are its first step's tokens (no text yet) and, when it ends, the others
    with its whole text; they add up to the streamed deltas' tokens and text; the summary streams as before."""

    def deltas(stream_paths: bool) -> list[RequestDelta]:
        pp = ParallelParams(mode=mode, num_paths=6, max_path_tokens=64, summary_max_tokens=24)
        rid = bundled.add_request(PATHFIND, pp, SamplingParams(temperature=1.0, seed=3), stream_paths=stream_paths)
        out = []
        while bundled.engine.has_unfinished():
            out += [d for d in bundled.engine.step() if d.request_id == rid]
        return out

    def parts(ds: list[RequestDelta]) -> dict:
        acc: dict = defaultdict(lambda: ([], "", None))
        for d in ds:
            ids, text, _ = acc[d.part, d.index]
            acc[d.part, d.index] = (ids + d.token_ids, text + d.text, d.finish_reason)
        return dict(acc)

    streamed, quiet = deltas(True), deltas(False)
    assert parts(quiet) == parts(streamed)
    paths = {k for k in parts(quiet) if k[0] != "summary"}
    for key in paths:
        mine = [d for d in quiet if (d.part, d.index) == key]
        first = next(d for d in streamed if (d.part, d.index) == key)
        assert len(mine) <= 2 and mine[0].token_ids == first.token_ids and mine[0].text == ""
        assert mine[-1].finish_reason is not None
    assert len([d for d in streamed if d.part != "summary"]) > 2 * len(paths)  # else nothing was coalesced
    summary = [(d.token_ids, d.text) for d in streamed if d.part == "summary"]
    assert summary == [(d.token_ids, d.text) for d in quiet if d.part == "summary"]


@pytest.mark.parametrize("phase", ["waiting", "paths", "summary"])
def test_abort_in_each_phase_frees_every_page_and_leaves_others_alone(tiny: LLM, phase: str) -> None:
    specs = mixed_specs()
    keep, victim = specs[0], specs[1]  # victim: 4 paths under Last-Finish, then a summary
    alone = solo(tiny, keep)
    eng = tiny.engine
    free = eng.pool.num_free
    k = eng.add_request(keep)
    v = eng.add_request(victim)
    got: dict[int, list[RequestDelta]] = defaultdict(list)
    if phase != "waiting":
        want = "path" if phase == "paths" else "summary"
        while not any(d.request_id == v and d.part == want for d in got[v]):
            for d in eng.step():
                got[d.request_id].append(d)
    assert eng.abort(v)
    assert not eng.abort(v + 100)  # unknown id
    n = len(got[v])
    while eng.has_unfinished():
        for d in eng.step():
            got[d.request_id].append(d)
    assert len(got[v]) == n  # nothing after the abort
    assert from_output(finished_output(got[k])) == alone
    assert eng.pool.num_free == free and not eng.abort(k)


def test_abort_from_another_thread_while_stepping(tiny: LLM) -> None:
    eng = tiny.engine
    free = eng.pool.num_free
    long = RequestSpec([5, 6, 7], ParallelParams(num_paths=4, max_path_tokens=400, summary_max_tokens=4),
                       SamplingParams(temperature=1.0, seed=1, ignore_eos=True), [30])
    rid = eng.add_request(long)
    started = threading.Event()

    def stepper() -> None:
        while eng.has_unfinished():
            if eng.step():
                started.set()

    t = threading.Thread(target=stepper)
    t.start()
    started.wait(30)
    assert eng.abort(rid)
    t.join(30)
    assert not t.is_alive() and eng.pool.num_free == free and eng.num_running == 0


def test_pool_pressure_queues_requests_and_rejects_one_that_never_fits(tiny_qwen2) -> None:  # noqa: ANN001
    llm = LLM(tiny_qwen2, dtype="float32", cache=CacheConfig(num_pages=20, page_size=4))
    eng = llm.engine
    specs = [RequestSpec([5 + i, 6, 7], ParallelParams(num_paths=3, max_path_tokens=10, summary_max_tokens=4),
                         SamplingParams(temperature=1.0, seed=i), [30]) for i in range(8)]
    alone = [solo(llm, s) for s in specs]
    assert eng.check(specs[0]) * 2 > eng.kv_pages_total >= eng.check(specs[0])  # one at a time fits
    huge = RequestSpec([5, 6, 7], ParallelParams(num_paths=8, max_path_tokens=100), SamplingParams(), [30])
    with pytest.raises(OutOfPagesError):
        eng.add_request(huge)
    assert not eng.has_unfinished()
    ids = [eng.add_request(s) for s in specs]
    assert eng.num_waiting == 8
    eng.step()
    assert eng.num_running == 1 and eng.num_waiting == 7
    got: dict[int, list[RequestDelta]] = defaultdict(list)
    while eng.has_unfinished():
        for d in eng.step():
            got[d.request_id].append(d)
    assert [from_output(finished_output(got[i])) for i in ids] == alone
    assert eng.kv_pages_used == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_schedules_keep_the_invariants(tiny_qwen2, seed: int) -> None:  # noqa: ANN001
    """Random interleavings of add / step / abort over a small pool: after every step no page is
    owned twice or leaked, every request ends exactly once (finished or aborted), and every finished
    request has the tokens it has alone."""
    llm = LLM(tiny_qwen2, dtype="float32", cache=CacheConfig(num_pages=64, page_size=4))
    eng = llm.engine
    rng = random.Random(seed)
    modes = ["parathinker", "majority", "sequential", "reprefill"]

    def random_spec(i: int) -> RequestSpec:
        mode = rng.choice(modes)
        pp = ParallelParams(mode=mode, num_paths=1 if mode == "sequential" else rng.randrange(2, 5),
                            max_path_tokens=rng.randrange(2, 10), summary_max_tokens=rng.randrange(1, 5),
                            termination=rng.choice(["first", "half", "last"]))
        sp = SamplingParams(temperature=rng.choice([0.0, 1.0]), seed=i, top_p=rng.choice([1.0, 0.9]))
        return RequestSpec([rng.randrange(4, 50) for _ in range(rng.randrange(1, 12))], pp, sp, [30])

    specs: dict[int, RequestSpec] = {}
    ended: dict[int, str] = {}
    outputs = {}
    ops = 0
    for i in range(80):
        spec = random_spec(i)
        specs[eng.add_request(spec)] = spec
        for _ in range(rng.randrange(0, 6)):
            ops += 1
            if rng.random() < 0.15:
                live = [r for r in specs if r not in ended]
                if live:
                    r = rng.choice(live)
                    assert eng.abort(r)
                    ended[r] = "aborted"
                continue
            for d in eng.step():
                assert d.request_id not in ended  # nothing after an abort or a finish
                if d.finished:
                    ended[d.request_id] = "finished"
                    outputs[d.request_id] = d.output
            check_pages(eng)
    while eng.has_unfinished():
        ops += 1
        for d in eng.step():
            assert d.request_id not in ended
            if d.finished:
                ended[d.request_id] = "finished"
                outputs[d.request_id] = d.output
        check_pages(eng)
    assert ops >= 150 and set(ended) == set(specs)
    assert 10 < len(outputs) < len(specs)
    for rid, out in outputs.items():
        assert from_output(out) == solo(llm, specs[rid])
    assert eng.pool.num_free == eng.kv_pages_total


def check_pages(eng) -> None:  # noqa: ANN001
    runs = {}
    for req in [*eng.scheduler.running, *eng.prefilling]:  # decoding, or prompts on the prefill thread
        for run in [req.prompt_run, *(r for s in all_seqs(req) for r in s.reads)]:
            if run is not None:
                runs[id(run)] = run
    owned = [p for run in runs.values() for p in run.pages]
    free = eng.pool.free_pages()
    assert len(owned) == len(set(owned)), "a page in two runs"
    assert not set(owned) & set(free), "a page both free and owned"
    assert len(free) == len(set(free))
    assert len(owned) + len(free) == eng.kv_pages_total, "a page leaked"
