"""The parallel-thinking engine: admission, prefill, batched path decoding, termination, summary.

Every step runs one batched forward over all sequences (of all active requests) that have a
single pending token, plus one forward per multi-token chunk (prompt prefill, the summary's
forced opening, a re-prefill). Positions and segment ids come from the layout module.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..errors import ConfigError, PromptTooLongError, TokenizerError
from ..layout import pack
from ..model import ParaThinkerForCausalLM
from ..tokens import ControlTokens
from .block_manager import PagePool
from .decode.config import DecodeConfig
from .detok import Decode, IncrementalDetokenizer
from .kv_cache import CacheConfig
from .outputs import RequestDelta, build_output, join_summary
from .plan import Chunk, Feed
from .runner import ModelRunner
from .sampler import Row, resample_exact, sample_tensor
from .sequence import Request, RequestSpec, Seq


@dataclass
class Drawn:
    """One step's draws, launched on the device; ``Engine._take`` reads them on the host and accepts them."""

    seqs: list[Seq]  # the rows drawn, in order
    done: set[int]  # rows whose forced tokens ran out (scoring)
    rows: list[Row]  # the sampled rows' params (``free`` indexes them)
    free: list[int]
    tokens: torch.Tensor  # (len(seqs),) ids on the device: the next step's inputs
    packed: torch.Tensor  # (2 or 3, len(seqs)) float64: ids, log-probs, redraw flags (host copy on CUDA)
    event: torch.cuda.Event | None  # the host copy is complete
    logits: torch.Tensor | None  # float32 logits for an exact redraw (None: no row can need one)
    lse: torch.Tensor  # (len(seqs),) their log-sum-exp


class Engine:
    def __init__(
        self,
        model: ParaThinkerForCausalLM,
        control: ControlTokens | None,
        eos_ids: tuple[int, ...],
        cache: CacheConfig | None = None,
        tokenizer: Any = None,
        decode: DecodeConfig | None = None,
    ):
        """``tokenizer``: decodes the text of streamed deltas and outputs (without one, texts are empty);
        ``decode``: how decode steps run (backend, CUDA graphs, fused step, overlap)."""
        cache = cache or CacheConfig()
        decode = decode or DecodeConfig()
        self.cache_config, self.decode_config = cache, decode
        self.model = model
        self.control = control
        self.eos_ids = tuple(eos_ids)
        self.runner = ModelRunner(model, cache, decode)
        self.pool = PagePool(self.runner.kv.num_pages, cache.page_size)
        # paths' own K/V in side-by-side blocks where the decode backend reads them in place (the CPU cascade)
        self.contiguous_paths = self.runner.decoder.side_by_side_paths
        self._decode: Decode = (lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False)) if tokenizer \
            else (lambda ids: "")
        # the queue: add_request/abort (any thread) leave work in the inbox, step (one thread) takes it
        self._lock = threading.Lock()
        self._next_id = 0
        self._requests: dict[int, Request] = {}  # unfinished requests by id
        self._inbox: list[Request] = []
        self._aborts: set[int] = set()
        self._waiting: deque[tuple[Request, int]] = deque()  # (request, pages it needs), in arrival order
        self._active: list[Request] = []
        self.finished: list[Request] = []  # unstreamed requests finished since the caller (run) last cleared it
        self._banned_plain = torch.tensor(control.all_ids if control else (), dtype=torch.long)
        # overlapped decoding (CUDA): launch step n+1 before reading step n's tokens on the host; the host's
        # bookkeeping then runs while the GPU computes. Same tokens as the synchronous loop (tests).
        self.overlap = decode.overlap and self.runner.device.type == "cuda"
        self._inflight: Drawn | None = None  # the last step's draws, not yet read (overlap)
        self.redrawn_rows = 0  # rows drawn again exactly (a top-p nucleus wider than the sampler's window)
        self.discarded_steps = 0  # overlapped steps thrown away and re-run (an exact redraw changed an input)

    # ---------------------------------------------------------------- admission
    def check(self, spec: RequestSpec) -> int:
        """Validate a request against the model/tokenizer; return its worst-case page count."""
        pp, L = spec.parallel, len(spec.prompt_ids)
        if L == 0:
            raise ConfigError("empty prompt")
        if pp.mode in ("parathinker", "reprefill"):
            if self.control is None:
                raise TokenizerError(
                    "this tokenizer has no ParaThinker control tokens: run `parathinker prepare` on the model, "
                    "or use --mode sequential/majority"
                )
            if pp.num_paths > self.control.max_paths:
                raise ConfigError(
                    f"num_paths={pp.num_paths} but the tokenizer has only <think1>..<think{self.control.max_paths}>: "
                    f"use at most {self.control.max_paths} paths (or `parathinker prepare --num-paths N`)"
                )
            ms = self.model.config.max_segments
            if pp.thought_embeddings and ms and pp.num_paths >= ms:
                raise ConfigError(f"num_paths={pp.num_paths} needs thought embeddings up to {pp.num_paths}; the model has {ms}")
        budget = spec.path_budget
        summary_len = 1 + len(spec.summary_prefix_ids) + pp.summary_max_tokens
        if spec.forced_summary is not None:
            summary_len = 1 + len(spec.forced_summary)
        ctx = self.model.config.max_position_embeddings
        if ctx <= L:
            raise PromptTooLongError(f"the prompt has {L} tokens; the model's context is {ctx}")
        pages = self.pool.pages_for(L) + self._paths(spec) * self._path_pages(spec)
        if pp.mode in ("sequential", "majority"):
            last = L + budget
        else:
            paths_span = (budget + 2) * (pp.num_paths if pp.flat_positions else 1)
            last = L + paths_span + summary_len
            pages += self.pool.pages_for(summary_len)
            if pp.mode == "reprefill":
                pages += self.pool.pages_for(L + pp.num_paths * (budget + 2) + summary_len)
        if last > ctx:
            raise PromptTooLongError(
                f"prompt ({L}) + budgets reach position {last}, past the model's context of {ctx}: "
                "lower --max-path-tokens / --summary-max-tokens"
            )
        self.pool.check_fits(pages)
        return pages

    # ---------------------------------------------------------------- the step API
    def add_request(self, spec: RequestSpec, prompt: str = "", *, stream: bool = True) -> int:
        """Check a request at once (typed one-line errors) and queue it; return its id.

        It is admitted (pages reserved, prompt prefilled) at the first ``step`` where its
        worst-case pages fit; requests that do not fit yet wait in order. ``prompt`` is the text
        its ``RequestOutput`` carries. ``stream``: ``step`` reports its tokens as ``RequestDelta``s
        (off for callers that read the finished requests themselves, like ``run``). Thread-safe.
        """
        need = self.check(spec)
        return self._enqueue(spec, prompt, need, stream).id

    def step(self) -> list[RequestDelta]:
        """One scheduling round: take queued requests and aborts, admit and prefill what fits, one
        batched forward over every live sequence of every running request, sample, advance phases.

        Returns the round's ``RequestDelta``s (streamed requests only); a finished request's last
        delta carries ``finished=True`` and its ``RequestOutput``. Call from one thread only. If
        the round raises, every running request is dropped (pages freed, no more deltas) and the
        engine stays usable; waiting requests stay queued.
        """
        self._take_inbox()
        admitted: list[Request] = []
        try:
            while self._waiting and self.pool.can_admit(self._waiting[0][1]):
                req, need = self._waiting.popleft()
                self.pool.admit(req.id, need)
                admitted.append(req)
            if admitted:  # their prompts are prefilled together
                self._prefill(admitted)
                self._active.extend(admitted)
                admitted = []
            if self._active:
                self._step(self._active)
        except BaseException:  # an error or an interrupt mid-step: give every page back
            self._inflight = None
            for req in [*self._active, *admitted]:
                self._drop(req, "failed")
            self._active = []
            raise
        deltas = [d for r in self._active if r.stream for d in self._deltas(r)]
        for req in [r for r in self._active if r.phase == "done"]:
            self._active.remove(req)
            self._release(req)
            with self._lock:
                self._requests.pop(req.id, None)
            if not req.stream:
                self.finished.append(req)
            else:
                out = build_output(req.prompt, req, self._decode)
                last = next((k for k in range(len(deltas) - 1, -1, -1) if deltas[k].request_id == req.id), None)
                if last is None:
                    deltas.append(RequestDelta(req.id, "summary" if req.summary else "sample", 0, [], ""))
                    last = len(deltas) - 1
                deltas[last].finished, deltas[last].output = True, out
        return deltas

    def abort(self, request_id: int) -> bool:
        """Stop a request in any phase; its pages return to the pool at the top of the next ``step``
        (before anything else runs) and it yields no more deltas. False if it is unknown or already
        finished. Thread-safe."""
        with self._lock:
            if request_id not in self._requests:
                return False
            self._aborts.add(request_id)
            return True

    def has_unfinished(self) -> bool:
        """Requests queued, running, or aborted but not yet cleaned up by a ``step``."""
        with self._lock:
            return bool(self._requests or self._aborts or self._inbox)

    @property
    def num_waiting(self) -> int:
        with self._lock:
            return len(self._inbox) + len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self._active)

    @property
    def kv_pages_total(self) -> int:
        return self.pool.usable_pages

    @property
    def kv_pages_used(self) -> int:
        return self.pool.usable_pages - self.pool.num_free

    def run(
        self,
        specs: list[RequestSpec],
        on_finish: Callable[[Request], None] | None = None,
        on_step: Callable[[list[Request]], None] | None = None,
    ) -> list[Request]:
        """Run requests to completion (a loop over ``step``); return them in input order.

        Every spec is checked before any is queued. ``on_finish(request)`` is called as each
        completes, ``on_step(running)`` after each step. Not to be mixed with another thread
        stepping the engine (that thread would receive these requests' deltas).
        """
        needs = [self.check(s) for s in specs]
        reqs = [self._enqueue(spec, "", need, stream=False) for spec, need in zip(specs, needs)]
        mine = {r.id for r in reqs}
        self.finished.clear()
        try:
            while any(r.phase != "done" for r in reqs):
                self.step()
                if on_step:
                    on_step(self._active)
                for req in self.finished:
                    if on_finish and req.id in mine:
                        on_finish(req)
                self.finished.clear()
        except BaseException:  # requests of this call still queued leave with it
            for r in reqs:
                self.abort(r.id)
            self._take_inbox()
            raise
        return reqs

    # ---------------------------------------------------------------- queue and aborts
    def _enqueue(self, spec: RequestSpec, prompt: str, need: int, stream: bool) -> Request:
        g = torch.Generator(device=self.runner.device)  # draws happen where the logits are
        g.manual_seed(spec.sampling.seed if spec.sampling.seed is not None else torch.seed())
        with self._lock:
            req = Request(self._next_id, spec, g, prompt=prompt, stream=stream, need=need)
            self._next_id += 1
            self._requests[req.id] = req
            self._inbox.append(req)
        return req

    def _take_inbox(self) -> None:
        """Move requests added since the last step to the queue, and carry out aborts (pages freed now)."""
        with self._lock:
            incoming, self._inbox = self._inbox, []
            aborts, self._aborts = self._aborts, set()
            for rid in aborts:
                self._requests.pop(rid, None)
        self._waiting.extend((r, r.need) for r in incoming)
        if not aborts:
            return
        if self._inflight is not None and any(s.req.id in aborts for s in self._inflight.seqs):
            self._drain(self._active)  # read the draws in flight first: they hold the aborted rows
        self._waiting = deque((r, n) for r, n in self._waiting if r.id not in aborts)
        for req in [r for r in self._active if r.id in aborts]:
            self._active.remove(req)
            self._drop(req, "aborted")

    def _drop(self, req: Request, phase: str) -> None:
        self._free(req)
        req.phase = phase  # type: ignore[assignment]
        with self._lock:
            self._requests.pop(req.id, None)

    def _deltas(self, req: Request) -> list[RequestDelta]:
        """New tokens and finishes of each of a request's sequences since the last step."""
        out = []
        for s in [*req.seqs, *([req.summary] if req.summary is not None else [])]:
            new = s.body[s.sent :]
            done = s.finished and not s.sent_finish
            if not new and not done:
                continue
            if s.detok is None:
                lead = (req.pp.summary_prefix or "") if s is req.summary else ""
                s.detok = IncrementalDetokenizer(self._decode, lead)
            text = s.detok.push(new) if new else ""
            s.sent = len(s.body)
            if done:
                s.sent_finish = True
                final = self._decode(s.body)
                if s is req.summary:
                    final = join_summary(req.pp.summary_prefix or "", final)
                text += s.detok.finish(final)
            part = "summary" if s is req.summary else s.kind
            out.append(RequestDelta(req.id, part, s.index, list(new), text, s.finish_reason if done else None))
        return out

    def _step(self, active: list[Request]) -> None:
        if self.overlap and self._overlap_step(active):
            return
        self._drain(active)
        seqs = [s for r in active for s in self._live(r) if s.pending]
        if not seqs:
            for r in active:
                self._advance(r)
            return
        one = [len(s.pending) == 1 and s.kinds is None for s in seqs]
        singles = [s for s, o in zip(seqs, one) if o]
        groups = [[s] for s, o in zip(seqs, one) if not o]
        if singles:
            groups.insert(0, singles)
        for group in groups:
            chunks = [self._chunk(s) for s in group]
            logits = self.runner.forward(chunks)
            self._consume(group, logits)
        for r in active:
            self._advance(r)

    # ---------------------------------------------------------------- overlapped decoding
    def _overlap_step(self, active: list[Request]) -> bool:
        """One decode step whose draws stay in flight; False (nothing done) when this step cannot overlap.

        With the previous step's draws in flight, this step's forward is launched first: rows drawn
        last step are fed their token on the device (the host has not seen it yet), the other rows
        their pending token. Then the previous draws are read and accepted, and termination runs,
        while the GPU computes. A row whose drawn token turned out not to continue it (an end token,
        a spent budget, a cut) is rolled back: its slot and position go to the token that does
        follow, next step; its wasted row reads and writes nothing anyone else reads. If an exact
        redraw changed a token that was already fed, the whole step is rolled back and run again
        synchronously. Sampling order per request is the synchronous loop's, so the tokens are too.

        Steps with multi-token chunks or teacher-forced rows do not overlap.
        """
        prev = self._inflight
        carried = set(prev.seqs) if prev is not None else set()
        seqs = [s for r in active for s in self._live(r) if s.pending or s in carried]
        if not seqs or any(s.forced is not None or s.kinds is not None or len(s.pending) > 1 for s in seqs):
            return False
        if prev is not None and any(r.forced is not None for r in prev.seqs):
            return False
        index = {s: j for j, s in enumerate(prev.seqs)} if prev is not None else {}
        dst, src = [], []
        for k, s in enumerate(seqs):
            if s in carried:
                s.pending = [0]  # a placeholder: the runner feeds the drawn token from the device
                dst.append(k)
                src.append(index[s])
        chunks = [self._chunk(s) for s in seqs]
        logits = self.runner.forward(chunks, Feed(prev.tokens, dst, src) if prev is not None else None)
        redrawn = False
        if prev is not None:
            self._inflight = None
            redrawn = self._take(prev)  # the host reads step n-1 while the GPU runs step n
        for r in active:
            self._advance(r)
        fed = set(dst)
        if redrawn:  # a token fed on the device was replaced: roll the whole step back, run it synchronously
            for k, (s, c) in enumerate(zip(seqs, chunks)):
                self._rollback(s)
                if k not in fed:
                    s.pending = list(c.tokens)
            self.discarded_steps += 1
            return False
        live = []
        for k, s in enumerate(seqs):
            # a carried row continues when its drawn token was accepted as its next input (else it has finished)
            if k in fed and (s.finished or len(s.pending) != 1):
                self._rollback(s)
                continue
            if k in fed:
                s.pending = []  # that token is in this step's forward
            if not s.finished:
                live.append(k)
        if live:
            sub = logits if len(live) == len(seqs) else logits.index_select(0, torch.tensor(live, device=logits.device))
            self._inflight = self._draw([seqs[k] for k in live], sub, keep_logits=sub is logits)
        return True

    def _drain(self, active: list[Request]) -> None:
        """Read and accept the draws in flight (overlap), as the synchronous loop would have."""
        if self._inflight is not None:
            prev, self._inflight = self._inflight, None
            self._take(prev)
            for r in active:
                self._advance(r)

    def _rollback(self, s: Seq) -> None:
        """Undo ``_chunk`` of a one-token step: the slot and position go to the next token fed."""
        s.t -= 1
        self.pool.shrink(s.own, 1)
        s.req.stats[self._stat_key(s)] -= 1

    @staticmethod
    def _paths(spec: RequestSpec) -> int:
        """Sequences a request decodes after its prompt: its samples or its parallel paths."""
        pp = spec.parallel
        return pp.paths_per_request if pp.mode in ("sequential", "majority") else pp.num_paths

    def _path_pages(self, spec: RequestSpec) -> int:
        """Pages reserved for each of those sequences' own K/V (a path adds its <think i> and </think i>)."""
        extra = 0 if spec.parallel.mode in ("sequential", "majority") else 2
        return self.pool.pages_for(spec.path_budget + extra)

    def _path_blocks(self, req: Request) -> list[list[int] | None]:
        """Pages for each path's own run: on the CPU, side-by-side blocks from one run of free pages when
        there is one (the cascade then reads the paths' K/V in place, ``PagedCascade``); else pages as needed."""
        n, k = self._paths(req.spec), self._path_pages(req.spec)
        block = self.pool.take_block(n * k, req.id) if self.contiguous_paths and n > 1 else None
        return [block[i * k : (i + 1) * k] if block else None for i in range(n)]

    # ---------------------------------------------------------------- phases
    def _prefill(self, reqs: list[Request]) -> None:
        """Prefill the prompts of newly admitted requests (batched: ``runner.prefill``), then start their paths."""
        chunks = []
        for req in reqs:
            req.mark("start")
            L = req.prompt_len
            req.prompt_run = self.pool.new_run()
            slots = self.pool.extend(req.prompt_run, L, req.id)
            chunks.append(Chunk(req.spec.prompt_ids, list(range(L)), [0] * L, slots, [req.prompt_run]))
        logits = self.runner.prefill(chunks)  # (len(reqs), V)
        for k, req in enumerate(reqs):
            req.stats["prefill_tokens"] += req.prompt_len
            req.mark("prefill")
            self._start_paths(req, logits[k : k + 1])

    def _start_paths(self, req: Request, logits: torch.Tensor) -> None:
        """The request's paths (or samples) after its prompt; ``logits`` (1, V) of the prompt's last token."""
        req.phase = "paths"
        pp = req.pp
        blocks = self._path_blocks(req)
        if pp.mode in ("sequential", "majority"):
            ends = frozenset() if req.spec.sampling.ignore_eos else frozenset(self.eos_ids)
            for k in range(pp.paths_per_request):
                req.seqs.append(self._new_seq(req, "sample", k + 1, k, self._banned_plain, ends, blocks[k]))
            self._consume(req.seqs, logits.expand(len(req.seqs), -1))
            return
        c = self.control
        assert c is not None
        for k in range(pp.num_paths):
            i = k + 1
            s = self._new_seq(req, "path", i, k, torch.tensor(c.banned_in_path(i)), frozenset(c.path_end_ids(i)),
                              blocks[k])
            s.segment = req.layout.segment(i)
            s.pending = [c.think_open[i - 1]]
            if req.spec.forced_paths is not None:
                s.forced = list(req.spec.forced_paths[k])
                if req.spec.prefill_forced:  # the body in the same chunk as <think i>; the close token stays forced
                    body, s.forced = s.forced[:-1], s.forced[-1:]
                    s.pending += body
                    s.body, s.logprobs = list(body), [float("nan")] * len(body)
            req.seqs.append(s)

    def _new_seq(self, req: Request, kind, index: int, order: int, banned, end_ids,  # noqa: ANN001
                 pages: list[int] | None = None) -> Seq:
        assert req.prompt_run is not None
        own = self.pool.new_run(pages)
        reads = [self.pool.share(req.prompt_run), own]
        return Seq(req, kind, index, order, reads, own, 0, banned, end_ids, req.spec.path_budget)

    def _start_summary(self, req: Request) -> None:
        c = self.control
        assert c is not None and req.prompt_run is not None
        req.mark("paths")
        req.phase = "summary"
        prefix = list(req.spec.summary_prefix_ids)
        budget = req.pp.summary_max_tokens
        if req.spec.forced_summary is not None:
            prefix, budget = [], len(req.spec.forced_summary)
        banned = torch.tensor(c.banned_in_summary())
        own = self.pool.new_run()
        if req.pp.mode == "reprefill":
            bodies = [s.body for s in req.seqs]
            layout = replace(req.layout, flat_stride=req.stride)  # flat positions: same slots as KV reuse
            packed = pack(req.spec.prompt_ids, bodies, prefix, c, config=layout, close_summary=False)
            s = Seq(req, "reprefill", 0, 0, [own], own, 0, banned, frozenset(c.summary_end_ids()), budget)
            s.pending, s.pending_positions, s.pending_segments = packed.input_ids, packed.positions, packed.segment_ids
            s.kinds = torch.tensor(packed.kinds)  # per token: the runner reads each segment by layout.sees
            s.next_position, s.t0 = packed.positions[-1] + 1, len(packed)
        else:
            reads = [self.pool.share(req.prompt_run)] + [self.pool.share(p.own) for p in req.seqs] + [own]
            s = Seq(req, "summary", 0, 0, reads, own, 0, banned, frozenset(c.summary_end_ids()), budget)
            s.pending = [c.summary_open, *prefix]
        if req.spec.forced_summary is not None:
            s.forced = list(req.spec.forced_summary)
        req.summary = s

    def _advance(self, req: Request) -> None:
        """Termination and phase changes, after a step's tokens were accepted."""
        if req.phase == "paths":
            if req.pp.mode in ("sequential", "majority"):
                if all(s.finished for s in req.seqs):
                    req.mark("paths")
                    req.phase = "done"
                return
            if not req.cut and sum(s.finished for s in req.seqs) >= self._quorum(req):
                req.cut = True
                for s in req.seqs:
                    if not s.finished:  # drop the token sampled this step, close with </think i>
                        if s.pending and s.body and s.pending[-1] == s.body[-1]:
                            s.body.pop()
                            s.logprobs.pop()
                        s.pending = [self.control.think_close[s.index - 1]]  # type: ignore[union-attr]
                        s.finish("cut")
            if all(s.finished and not s.pending for s in req.seqs):
                self._start_summary(req)
        elif req.phase == "summary" and req.summary is not None and req.summary.finished:
            req.mark("summary")
            req.phase = "done"

    def _quorum(self, req: Request) -> int:
        if req.spec.forced_paths is not None:
            return len(req.seqs)
        return req.pp.finish_quorum

    def _live(self, req: Request) -> list[Seq]:
        if req.phase == "paths":
            return req.seqs
        if req.phase == "summary" and req.summary is not None:
            return [req.summary]
        return []

    # ---------------------------------------------------------------- per step
    def _chunk(self, s: Seq) -> Chunk:
        req, n = s.req, len(s.pending)
        slots = self.pool.extend(s.own, n, req.id)
        if s.pending_positions is not None:
            pos, seg = s.pending_positions, s.pending_segments or [0] * n
        else:
            pos = [self._position(s, s.t + j) for j in range(n)]
            seg = [s.segment] * n
        # paths and samples read their request's prompt run first: a prefix shared with their siblings
        chunk = Chunk(s.pending, pos, seg, slots, s.reads, s.kinds, shared_prefix=s.kind in ("path", "sample"))
        req.stats[self._stat_key(s)] += n
        s.t += n
        s.pending, s.pending_positions, s.pending_segments, s.kinds = [], None, None, None
        return chunk

    @staticmethod
    def _stat_key(s: Seq) -> str:
        if s.kind == "reprefill" and s.kinds is not None:
            return "reprefill_tokens"  # the packed re-computation; the summary's own decoding counts as summary
        return "path_tokens" if s.kind in ("path", "sample") else "summary_tokens"

    def _position(self, s: Seq, t: int) -> int:
        req = s.req
        L = req.prompt_len
        if s.kind == "path":
            return req.layout.path_position(L, s.order, t, req.stride)
        if s.kind == "summary":
            lens = [p.t for p in req.seqs]  # every path is closed and cached by now
            return req.layout.summary_position(L, lens, t, req.stride)
        if s.kind == "reprefill":  # decoding after the packed chunk, which carried its own positions
            assert s.next_position is not None
            return s.next_position + t - s.t0
        return L + t  # plain sample

    def _consume(self, seqs: list[Seq], logits: torch.Tensor) -> None:
        """Pick the next token of each sequence that still decodes (sampled, or forced when scoring) and accept it."""
        drawn = self._draw(seqs, logits)
        if drawn is not None:
            self._take(drawn)

    def _draw(self, seqs: list[Seq], logits: torch.Tensor, keep_logits: bool = False) -> Drawn | None:
        """Launch the draws of ``seqs`` that still decode; nothing waits for the device.

        ``logits`` (len(seqs), V) stay on the device: sampling and the log-probs happen there, and
        the chosen ids, their log-probs and the redraw flags leave for the host in one copy
        (asynchronous on CUDA; ``_take`` waits for it). ``keep_logits``: the next forward may
        overwrite ``logits`` before ``_take`` (a replayed graph's output), so a rare exact redraw
        reads a copy.
        """
        keep = [k for k, s in enumerate(seqs) if not s.finished]
        if not keep:
            return None
        todo = [seqs[k] for k in keep]
        stacked = logits if len(keep) == len(seqs) else logits[torch.tensor(keep, device=logits.device)]
        dev = stacked.device
        free = [k for k, s in enumerate(todo) if s.forced is None]
        done = set()
        forced: dict[int, int] = {}
        for k, s in enumerate(todo):
            if s.forced is not None:
                if s.forced:
                    forced[k] = s.forced.pop(0)
                else:
                    done.add(k)
        rows = [Row(todo[k].req.spec.sampling, todo[k].req.generator, todo[k].banned) for k in free]
        unsure = None  # rows whose top-p window may have been too narrow (sampler): redrawn in _take
        if len(free) == len(todo):
            tokens, unsure = sample_tensor(stacked, rows)
        else:
            host = torch.zeros(len(todo), dtype=torch.long)
            for k, tok in forced.items():
                host[k] = tok
            tokens = host.to(dev)
            if free:
                at = torch.tensor(free, device=dev)
                drawn, flags = sample_tensor(stacked.index_select(0, at), rows)
                tokens.index_copy_(0, at, drawn)
                if flags is not None:
                    unsure = torch.zeros(len(todo), dtype=torch.bool, device=dev).index_copy_(0, at, flags)
        lg = stacked.float()
        lse = torch.logsumexp(lg, dim=-1)
        picked = lg.gather(1, tokens[:, None])[:, 0] - lse
        # one device->host copy for the whole batch: ids (exact in float64), their log-probs, the flags
        parts = [tokens.double(), picked.double()] + ([unsure.double()] if unsure is not None else [])
        packed = torch.stack(parts)
        event = None
        if dev.type == "cuda":
            host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
            host.copy_(packed, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            packed = host
        if unsure is not None and keep_logits and lg is logits:
            lg = lg.clone()  # (lg is already a new tensor when the logits were not float32 or were a row subset)
        return Drawn(todo, done, rows, free, tokens, packed, event, lg if unsure is not None else None, lse)

    def _take(self, d: Drawn) -> bool:
        """Wait for a draw's ids on the host and accept them; True if some row was redrawn exactly."""
        if d.event is not None:
            d.event.synchronize()
        ids, lps, *flagged = d.packed.tolist()
        redo = [k for k, f in enumerate(flagged[0]) if f] if flagged else []
        if redo:  # rare (a nucleus wider than the sampler's window): an exact redraw of just those rows
            assert d.logits is not None
            at = torch.tensor(redo, device=d.logits.device)
            lg = d.logits.index_select(0, at)
            fix = resample_exact(lg, [d.rows[d.free.index(k)] for k in redo])
            fixed_lp = lg.gather(1, fix[:, None])[:, 0] - d.lse.index_select(0, at)
            for k, tok, lp in zip(redo, fix.tolist(), fixed_lp.tolist()):
                ids[k], lps[k] = tok, lp
            self.redrawn_rows += len(redo)
        for k, s in enumerate(d.seqs):
            if k in d.done:
                s.finish("end")
            else:
                self._accept(s, int(ids[k]), lps[k])
        return bool(redo)

    def _accept(self, s: Seq, tok: int, logprob: float) -> None:
        if tok in s.end_ids:
            s.end_logprob = logprob
            s.finish("end")
            if s.kind == "path":
                s.pending = [self.control.think_close[s.index - 1]]  # type: ignore[union-attr]
            return
        if s.kind == "path" and len(s.body) >= s.budget:  # budget spent: close it instead of this token
            s.finish("length")
            s.pending = [self.control.think_close[s.index - 1]]  # type: ignore[union-attr]
            return
        s.body.append(tok)
        s.logprobs.append(logprob)
        if s.kind != "path" and len(s.body) >= s.budget:
            s.finish("length")  # nothing follows: no need to run the last token through the model
            return
        s.pending = [tok]

    def _release(self, req: Request) -> None:
        req.mark("end")
        self._free(req)
        m, st = req.marks, req.stats
        st["time_prefill"] = m["prefill"] - m["start"]
        st["time_paths"] = m.get("paths", m["end"]) - m["prefill"]
        st["time_summary"] = m["end"] - m["paths"] if "summary" in m else 0.0
        st["time_total"] = m["end"] - m["start"]
        st["forwards"] = self.runner.num_forwards

    def _free(self, req: Request) -> None:
        """Return a request's pages and what is left of its reservation."""
        for s in [*req.seqs, *([req.summary] if req.summary else [])]:
            for r in s.reads:
                self.pool.release(r)
        if req.prompt_run is not None:
            self.pool.release(req.prompt_run)
        self.pool.finish(req.id)
