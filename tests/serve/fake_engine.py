"""A scripted engine that implements the step API contract (tests of the HTTP layer only).

Path i of a request writes ``len_i`` words (``w{i}.{t}``, one token each; ``len_i`` from the seed),
the summary writes the forced prefix and ``\\boxed{<seed>}``. ``hold`` keeps requests waiting;
``fail`` makes the next ``step`` raise. Admission: at most ``capacity`` running requests.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from dataclasses import dataclass, field, replace

from parathinker.engine.outputs import PathOutput, RequestOutput, SummaryOutput
from parathinker.errors import ConfigError, PromptTooLongError
from parathinker.params import ParallelParams, SamplingParams

CONTEXT = 64
PREFIX = "The answer is"


@dataclass
class Spec:
    prompt_ids: list[int]
    parallel: ParallelParams
    sampling: SamplingParams


@dataclass
class Delta:
    request_id: int
    part: str
    index: int
    token_ids: list[int]
    text: str
    finish_reason: str | None = None
    finished: bool = False
    output: RequestOutput | None = None


@dataclass
class _Req:
    id: int
    spec: Spec
    lens: list[int]
    t: int = 0
    summary_t: int = 0
    texts: dict[int, list[str]] = field(default_factory=dict)


class FakeEngine:
    def __init__(self, capacity: int = 4, pages_per_request: int = 3):
        self.capacity, self.ppr = capacity, pages_per_request
        self.kv_pages_total = self.kv_pages_capacity = capacity * pages_per_request
        self.hold = False
        self.fail = False
        self.aborted: list[int] = []
        self._lock = threading.Lock()
        self._waiting: deque[_Req] = deque()
        self._running: list[_Req] = []
        self._next = 0

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def kv_pages_used(self) -> int:
        return self.ppr * len(self._running)

    def has_unfinished(self) -> bool:
        return bool(self._waiting or self._running)

    def add_request(self, spec: Spec, prompt: str = "", stream_paths: bool = True) -> int:
        # (stream_paths: the real engine then coalesces a path's deltas; the server reads both ways alike)
        pp = spec.parallel
        if pp.mode in ("parathinker", "reprefill") and pp.num_paths > 8:
            raise ConfigError(f"num_paths={pp.num_paths} but the tokenizer has only <think1>..<think8>: use at most 8 paths")
        if len(spec.prompt_ids) >= CONTEXT:
            raise PromptTooLongError(f"the prompt has {len(spec.prompt_ids)} tokens; the model's context is {CONTEXT}")
        rng = random.Random(spec.sampling.seed)
        n = 1 if pp.mode == "sequential" else pp.num_paths
        lens = [rng.randint(2, min(6, pp.max_path_tokens)) for _ in range(n)]
        with self._lock:
            r = _Req(self._next, spec, lens)
            self._next += 1
            self._waiting.append(r)
        return r.id

    def abort(self, request_id: int) -> bool:
        with self._lock:
            for q in (self._waiting, self._running):
                for r in list(q):
                    if r.id == request_id:
                        q.remove(r)
                        self.aborted.append(request_id)
                        return True
        return False

    def step(self) -> list[Delta]:
        if self.fail:
            raise RuntimeError("scripted failure")
        out: list[Delta] = []
        with self._lock:
            while self._waiting and not self.hold and len(self._running) < self.capacity:
                self._running.append(self._waiting.popleft())
            for r in list(self._running):
                out += self._advance(r)
                if out and out[-1].finished and out[-1].request_id == r.id:
                    self._running.remove(r)
        return out

    def _advance(self, r: _Req) -> list[Delta]:
        pp = r.spec.parallel
        part = "path" if pp.mode in ("parathinker", "reprefill") else "sample"
        if part == "path":
            k = {"first": 1, "half": (len(r.lens) + 1) // 2, "last": len(r.lens)}.get(pp.termination)
            stop_at = sorted(r.lens)[(k or int(pp.termination)) - 1]
        else:
            stop_at = max(r.lens)
        if r.t < stop_at:
            r.t += 1
            out = []
            for i, n in enumerate(r.lens, 1):
                if r.t > n:
                    continue
                w = f" w{i}.{r.t}"
                r.texts.setdefault(i, []).append(w)
                reason = "end" if r.t == n else ("cut" if r.t == stop_at else None)
                out.append(Delta(r.id, part, i, [r.t], w, reason))
            if part == "sample" and r.t == stop_at:
                out.append(Delta(r.id, "sample", 1, [], "", None, True, self._output(r, None)))
            return out
        prefix = pp.summary_prefix if pp.summary_prefix is not None else PREFIX
        pieces = [prefix, " \\boxed{", str(r.spec.sampling.seed), "}"]
        r.summary_t += 1
        last = r.summary_t == len(pieces)
        d = Delta(r.id, "summary", 0, [] if r.summary_t == 1 else [100 + r.summary_t], pieces[r.summary_t - 1],
                  "end" if last else None)
        if last:
            d.finished, d.output = True, self._output(r, "".join(pieces))
        return [d]

    def _output(self, r: _Req, summary: str | None) -> RequestOutput:
        from parathinker.answers import last_boxed, majority_vote

        paths = []
        for i, n in enumerate(r.lens, 1):
            t = "".join(r.texts.get(i, []))
            k = len(r.texts.get(i, []))
            reason = "end" if k == n else "cut"
            paths.append(PathOutput(i, t, list(range(1, k + 1)), reason, answer=None))
        s = None
        pp = r.spec.parallel
        votes: dict[str, int] = {}
        if summary is not None:
            s = SummaryOutput(summary, [101, 102, 103], "end", PREFIX)
            answer = last_boxed(summary) or None
        elif pp.mode == "majority":
            for p in paths:
                p.answer = str(r.spec.sampling.seed)
            answer, votes = majority_vote(p.answer for p in paths)
        else:
            answer = None
        return RequestOutput("", list(r.spec.prompt_ids), pp.mode, paths, s, answer, votes)


class FakeLLM:
    """What the server needs of an ``LLM``: ``engine``, ``request_spec``, ``default_params``."""

    path = None
    control = None

    def __init__(self, engine: FakeEngine | None = None):
        self.engine = engine or FakeEngine()

    def default_params(self) -> tuple[ParallelParams, SamplingParams]:
        return ParallelParams(num_paths=4, max_path_tokens=16, summary_max_tokens=8), SamplingParams()

    def request_spec(self, prompt, parallel=None, sampling=None, *, raw=False) -> Spec:  # noqa: ANN001
        dp, ds = self.default_params()
        parallel = parallel or dp
        if parallel.summary_prefix is None:
            parallel = replace(parallel, summary_prefix=PREFIX)
        text = prompt if isinstance(prompt, str) else " ".join(m["content"] for m in prompt) if prompt and isinstance(prompt[0], dict) else None
        ids = list(prompt) if text is None else [len(w) for w in text.split()] or [1]
        return Spec(ids, parallel, sampling or ds)
