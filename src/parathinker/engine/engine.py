"""The parallel-thinking engine: the step API over the scheduler, the model runner and the draws.

Each ``step`` reads like this: schedule (take queued requests and aborts, admit what fits), run
(the admitted prompts and the running sequences' multi-token chunks, such as a summary's forced
opening, in one packed forward; then one batched forward over every sequence with a single pending
token, plus one forward per chunk left: scored chunks, multi-token chunks under overlap),
postprocess (draw and accept the tokens, advance phases, report deltas, release finished requests).
On the CPU, with a core left free by torch's threads, the prompts of requests admitted while others
run, and running requests' multi-token chunks (a summary's forced opening), go to the prefill thread
instead, beside the step's decode; their requests go on at the next step (same tokens).
What is scheduled: ``scheduler``; how it is computed: ``runner`` (and its decode backend); how
tokens are drawn: ``draws``.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import torch

from ..model import ParaThinkerForCausalLM
from ..tokens import ControlTokens
from .block_manager import PagePool
from .decode.config import DecodeConfig
from .detok import Decode, IncrementalDetokenizer
from .draws import Draws
from .kv_cache import GROWTH, CacheConfig
from .outputs import RequestDelta, build_output, join_summary
from .runner import ModelRunner
from .scheduler import Scheduler
from .sequence import Request, RequestSpec, Seq


class Engine:
    """Requests in, ``RequestDelta``s out, one ``step`` at a time (see the step API in ``docs/architecture.md``)."""

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
        self.eos_ids = tuple(eos_ids)
        self.runner = ModelRunner(model, cache, decode)
        self.pool = PagePool(self.runner.kv.num_pages, cache.page_size, self.runner.kv.max_pages)
        cfg = model.config
        self.scheduler = Scheduler(self.pool, control, self.eos_ids, cfg.max_position_embeddings, cfg.max_segments,
                                   self.runner.decoder.side_by_side_paths)
        self.draws = Draws(self.scheduler, self.runner)
        self._decode: Decode = (lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False)) if tokenizer \
            else (lambda ids: "")
        # the queue: add_request/abort (any thread) leave work in the inbox, step (one thread) takes it
        self._lock = threading.Lock()
        self._next_id = 0
        self._requests: dict[int, Request] = {}  # unfinished requests by id
        self._inbox: list[Request] = []
        self._aborts: set[int] = set()
        self.finished: list[Request] = []  # unstreamed requests finished since the caller (run) last cleared it
        # overlapped decoding (CUDA): launch step n+1 before reading step n's tokens on the host; the host's
        # bookkeeping then runs while the GPU computes. Same tokens as the synchronous loop (tests).
        self.overlap = decode.overlap and self.runner.device.type == "cuda"
        # the prefill thread (CPU, a core left free by torch's threads): the prompts of requests admitted while
        # others run, and the multi-token chunks of running requests (a summary's forced opening), run there,
        # overlapped with the step's decode; those requests go on at the next step
        self.prefill_thread = decode.prefill_thread and self.runner.device.type == "cpu" and spare_core()
        self._prefiller: ThreadPoolExecutor | None = None
        # launched prefills, in launch order: (the forward, the admitted requests, the running sequences' chunks)
        self._prefilling: list[tuple[Future, list[Request], list[Seq]]] = []
        self.thread_prefills = 0  # forwards run on the prefill thread

    @property
    def control(self) -> ControlTokens | None:
        """The tokenizer's ParaThinker control tokens (None: plain sequential/majority only); the scheduler's."""
        return self.scheduler.control

    @control.setter
    def control(self, control: ControlTokens | None) -> None:
        self.scheduler.control = control

    def check(self, spec: RequestSpec) -> int:
        """Validate a request against the model/tokenizer; return its worst-case page count."""
        return self.scheduler.check(spec)

    @property
    def redrawn_rows(self) -> int:
        """Rows drawn again exactly (a top-p nucleus wider than the sampler's window)."""
        return self.draws.redrawn_rows

    @property
    def discarded_steps(self) -> int:
        """Overlapped steps thrown away and re-run (an exact redraw changed a token already fed)."""
        return self.draws.discarded_steps

    # ---------------------------------------------------------------- the step API
    def add_request(self, spec: RequestSpec, prompt: str = "", *, stream: bool = True, stream_paths: bool = True) -> int:
        """Check a request at once (typed one-line errors) and queue it; return its id.

        It is admitted (pages reserved, prompt prefilled) at the first ``step`` where its
        worst-case pages fit; requests that do not fit yet wait in order. ``prompt`` is the text
        its ``RequestOutput`` carries. ``stream``: ``step`` reports its tokens as ``RequestDelta``s
        (off for callers that read the finished requests themselves, like ``run``). ``stream_paths``
        off: a path's (a majority vote's sample's) deltas come twice, at its first token (no text yet) and
        when it ends (every other token, its whole text), not once per step: for a caller that shows the
        paths only once they are done (a server without ``stream_paths``), no per-token detokenizing.
        Thread-safe.
        """
        need = self.check(spec)
        return self._enqueue(spec, prompt, need, stream, stream_paths).id

    def step(self) -> list[RequestDelta]:
        """One scheduling round: take queued requests and aborts, admit and prefill what fits, one
        batched forward over every live sequence of every running request, sample, advance phases.

        Returns the round's ``RequestDelta``s (streamed requests only); a finished request's last
        delta carries ``finished=True`` and its ``RequestOutput``. Call from one thread only. If
        the round raises, every running request is dropped (pages freed, no more deltas) and the
        engine stays usable; waiting requests stay queued.
        """
        self._take_inbox()
        sched = self.scheduler
        admitted: list[Request] = []
        try:
            self._join_prefills(block=not sched.running)  # prompts prefilled on the prefill thread: they run now
            self._fit_pool()
            admitted = sched.admit()  # schedule
            # run: their prompts and the running sequences' multi-token chunks (a summary's forced opening)
            # in one packed forward, before the step's one-token rows
            many = [] if self.overlap else [s for r in sched.running for s in sched.live(r)
                                            if len(s.pending) > 1 and s.kinds is None]
            if (admitted or many) and self.prefill_thread and not self.overlap:  # beside the decode, if any
                admitted, many = self._launch_prefill(admitted, many)
            if admitted or many:
                self._prefill(admitted, many)
                sched.running.extend(admitted)
                admitted = []
            if sched.running:
                self._decode_step(sched.running)
        except BaseException:  # an error or an interrupt mid-step: give every page back
            self.draws.inflight = None
            prefilling = self._settle_prefills()
            for req in [*sched.running, *admitted, *prefilling]:
                self._drop(req, "failed")
            sched.running = []
            raise
        return self._postprocess()  # deltas, finished requests released

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
            return len(self._inbox) + len(self.scheduler.waiting)

    @property
    def num_running(self) -> int:
        """Admitted requests: decoding, or their prompts on the prefill thread."""
        return len(self.scheduler.running) + len(self.prefilling)

    @property
    def prefilling(self) -> list[Request]:
        """Requests out of the step while the prefill thread runs their prompt or their chunk (they own their
        pages; they go on at the next step)."""
        return [r for _, reqs, many in self._prefilling for r in _owners(reqs, many) if r.phase != "aborted"]

    @property
    def kv_pages_total(self) -> int:
        """KV pages in the pool now (a growable CPU pool holds fewer than it may grow to)."""
        return self.pool.usable_pages

    @property
    def kv_pages_capacity(self) -> int:
        """KV pages the queued requests may have: the pool's size, or for a growable pool what it grows to
        for them (``KVCache.queue_pages``); when these are in use, requests wait for pages."""
        return max(self.pool.usable_pages, self.runner.kv.queue_pages - 1)  # (one page is the null page)

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
                    on_step(self.scheduler.running)
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

    # ---------------------------------------------------------------- queue, aborts, deltas
    def _enqueue(self, spec: RequestSpec, prompt: str, need: int, stream: bool, stream_paths: bool = True) -> Request:
        g = torch.Generator(device=self.runner.device)  # draws happen where the logits are
        g.manual_seed(spec.sampling.seed if spec.sampling.seed is not None else torch.seed())
        with self._lock:
            req = Request(self._next_id, spec, g, prompt=prompt, stream=stream, need=need, stream_paths=stream_paths)
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
        sched = self.scheduler
        sched.waiting.extend(incoming)
        if not aborts:
            return
        inflight = self.draws.inflight
        if inflight is not None and any(s.req.id in aborts for s in inflight.seqs):
            self.draws.drain(sched.running)  # read the draws in flight first: they hold the aborted rows
        sched.waiting = deque(r for r in sched.waiting if r.id not in aborts)
        for req in [r for r in sched.running if r.id in aborts]:
            sched.running.remove(req)
            self._drop(req, "aborted")
        for fut, reqs, many in self._prefilling:
            hit = [r for r in _owners(reqs, many) if r.id in aborts]
            if hit:
                wait([fut])  # its pages are written by the prefill thread until it is done (an error: raised at the join)
                for req in hit:
                    self._drop(req, "aborted")  # its row of the prefill's logits is skipped when the rest join

    def _fit_pool(self) -> None:
        """A growable KV pool (CPU, no budget given) grows before admission when the queue needs more pages:
        for all waiting requests up to ``kv.queue_pages``; for the first one alone, with nothing running
        (``check`` passed it), up to ``kv.max_pages``. Otherwise requests wait for pages, as with a fixed pool."""
        kv, pool, sched = self.runner.kv, self.pool, self.scheduler
        if not kv.growable or not sched.waiting or self.draws.inflight is not None or self._prefilling:
            return  # (a prefill in flight writes into the pool a growth replaces)
        needs = [r.need for r in sched.waiting]
        if pool.can_admit(sum(needs)):
            return
        in_use = pool.num_in_use
        # page counts below include the null page, as kv.num_pages does
        limit = kv.queue_pages if sched.running else max(kv.queue_pages, in_use + needs[0] + 1)
        target = min(in_use + sum(needs) + 1, limit)
        if target > pool.num_pages:
            pages = min(max(target, int(pool.num_pages * GROWTH)), limit, kv.max_pages)
            self.runner.grow_kv(pages)
            pool.grow(pages)

    def _drop(self, req: Request, phase: str) -> None:
        self.scheduler.free(req)
        req.phase = phase  # type: ignore[assignment]
        with self._lock:
            self._requests.pop(req.id, None)

    def _deltas(self, req: Request) -> list[RequestDelta]:
        """New tokens and finishes of each of a request's sequences since the last step."""
        out = []
        # unstreamed paths (``stream_paths`` off): their first token at once, then nothing until they end
        quiet = not req.stream_paths and req.pp.mode != "sequential"
        for s in [*req.seqs, *([req.summary] if req.summary is not None else [])]:
            new = s.body[s.sent :]
            done = s.finished and not s.sent_finish
            if not new and not done:
                continue
            coalesced = quiet and s is not req.summary
            if coalesced and s.sent and not done:
                continue
            if s.detok is None:
                lead = (req.pp.summary_prefix or "") if s is req.summary else ""
                s.detok = IncrementalDetokenizer(self._decode, lead)
            text = s.detok.push(new) if new and not coalesced else ""
            s.sent = len(s.body)
            if done:
                s.sent_finish = True
                final = self._decode(s.body)
                if s is req.summary:
                    final = join_summary(req.pp.summary_prefix or "", final)
                text += s.detok.finish(final)
            part = "summary" if s is req.summary else s.role
            out.append(RequestDelta(req.id, part, s.index, list(new), text, s.finish_reason if done else None))
        return out

    def _postprocess(self) -> list[RequestDelta]:
        """The step's deltas of streamed requests; finished requests released (the last delta carries the output)."""
        sched = self.scheduler
        deltas = [d for r in sched.running if r.stream for d in self._deltas(r)]
        for req in [r for r in sched.running if r.phase == "done"]:
            sched.running.remove(req)
            sched.release(req, self.runner.num_forwards)
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

    def _prefill(self, reqs: list[Request], many: list[Seq]) -> None:
        """Prefill the prompts of newly admitted requests and run the multi-token chunks of ``many`` (causal,
        after a context) in packed forwards (``runner.prefill``); start the requests' paths, draw the chunks'
        next tokens. Each packed chunk computes what it would alone (tested)."""
        self._prefilled(reqs, many, self.runner.prefill(self._prefill_chunks(reqs, many)))

    def _prefill_chunks(self, reqs: list[Request], many: list[Seq]) -> list:
        """The forward of ``_prefill``: the prompts of ``reqs``, then the chunks of ``many`` (slots taken now)."""
        return self.scheduler.prompt_chunks(reqs) + [self.scheduler.chunk(s) for s in many]

    def _prefilled(self, reqs: list[Request], many: list[Seq], logits: torch.Tensor) -> None:
        """After that forward (``logits``: one row per prompt, then per chunk): the requests start their paths,
        the chunks draw their next token."""
        self._start(reqs, logits)
        if many:
            self.draws.consume(many, logits[len(reqs) :])

    def _start(self, reqs: list[Request], logits: torch.Tensor) -> None:
        """Requests whose prompts are prefilled (``logits[k]``: request k's last prompt token) start their paths."""
        for k, req in enumerate(reqs):
            req.stats["prefill_tokens"] += req.prompt_len
            req.mark("prefill")
            first = self.scheduler.start_paths(req)  # samples draw their first token from the prompt's logits
            if first:
                self.draws.consume(first, logits[k : k + 1].expand(len(first), -1))

    def _launch_prefill(self, reqs: list[Request], many: list[Seq]) -> tuple[list[Request], list[Seq]]:
        """Send the prompts of ``reqs`` and the chunks of ``many`` to the prefill thread if other running requests
        decode meanwhile; return what is left for the step's own packed forward (nothing, or everything).
        The requests leave ``running`` until ``_join_prefills`` takes them back.

        Only the forward runs there: the pool, the scheduler and the draws stay on the stepping thread (the
        chunks' slots are taken here). It writes only those slots, which nothing reads before the join, and
        reads K/V that nothing writes meanwhile (the prompt; for a summary, its own request's finished paths)."""
        sched = self.scheduler
        owners = {id(s.req) for s in many}
        others = [r for r in sched.running if id(r) not in owners]
        if not others:  # nothing would decode beside it: the step would only wait for the thread
            return reqs, many
        if self._prefiller is None:
            self._prefiller = ThreadPoolExecutor(1, thread_name_prefix="parathinker-prefill")
        chunks = self._prefill_chunks(reqs, many)
        sched.running = others
        self.thread_prefills += 1
        self._prefilling.append((self._prefiller.submit(self.runner.prefill, chunks), list(reqs), list(many)))
        return [], []

    def _join_prefills(self, block: bool) -> None:
        """Requests whose prompts or chunks the prefill thread has finished go on, in launch order: a prompt's
        request starts its paths, a chunk draws its next token; ``block`` (nothing else to run): wait for
        them. A prefill that failed raises here, as it would have in the step."""
        while self._prefilling and (block or self._prefilling[0][0].done()):
            fut, reqs, many = self._prefilling[0]
            logits = fut.result()
            self._prefilling.pop(0)
            owners = _owners(reqs, many)  # the logits' rows
            rows = [k for k, r in enumerate(owners) if r.phase != "aborted"]
            if len(rows) < len(owners):
                n = len(reqs)
                reqs, many = [reqs[k] for k in rows if k < n], [many[k - n] for k in rows if k >= n]
                logits = logits[rows]
            self._prefilled(reqs, many, logits)
            self.scheduler.running.extend(_owners(reqs, many))

    def _settle_prefills(self) -> list[Request]:
        """Wait for every prefill in flight (their writes done); return their requests, now to be dropped."""
        wait([fut for fut, *_ in self._prefilling])  # whatever their outcome
        reqs = self.prefilling
        self._prefilling = []
        return reqs

    def _decode_step(self, active: list[Request]) -> None:
        """One forward over every sequence with a single pending token (plus one per multi-token chunk),
        its tokens drawn and accepted, phases advanced."""
        sched, draws = self.scheduler, self.draws
        if self.overlap and draws.overlap_step(active):
            return
        draws.drain(active)
        seqs = [s for r in active for s in sched.live(r) if s.pending]
        if not seqs:
            for r in active:
                sched.advance(r)
            return
        one = [len(s.pending) == 1 and s.kinds is None for s in seqs]
        singles = [s for s, o in zip(seqs, one) if o]
        groups = [[s] for s, o in zip(seqs, one) if not o]
        if singles:
            groups.insert(0, singles)
        for group in groups:
            chunks = [sched.chunk(s) for s in group]
            logits = self.runner.forward(chunks)
            draws.consume(group, logits)
        for r in active:
            sched.advance(r)


def spare_core(cores: float | None = None) -> bool:
    """Whether ``cores`` (default: this machine's) leave one beside torch's threads: what the prefill thread
    needs. A process sharing the machine (an engine process, a Ray replica) passes its share."""
    return torch.get_num_threads() + 1 <= (os.cpu_count() or 1 if cores is None else cores)


def _owners(reqs: list[Request], many: list[Seq]) -> list[Request]:
    """The requests of a prefill: its prompts' requests, then its chunks' (the order of its logits' rows)."""
    return [*reqs, *(s.req for s in many)]
