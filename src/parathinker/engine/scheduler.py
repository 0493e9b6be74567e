"""The scheduler: which requests run, their pages, their phases, and what each sequence feeds next.

Admission in arrival order once a request's worst-case pages fit (reserved, so a running request
never runs out); a request's phases: paths (or samples) -> summary (reusing the paths' KV, or a
re-prefill) -> done; termination (first / half / last / k finished paths; a cut path is closed with
its own ``</think i>``); chunks with the layout's positions and segment ids. No model code: the
engine runs the chunks it makes and hands back the drawn tokens (``accept``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace

import torch

from ..errors import ConfigError, PromptTooLongError, TokenizerError
from ..layout import pack
from ..tokens import ControlTokens
from .block_manager import PagePool
from .plan import Chunk
from .sequence import Request, RequestSpec, Role, Seq


class Scheduler:
    """Waiting and running requests over one page pool (torch only for the ban lists)."""

    def __init__(self, pool: PagePool, control: ControlTokens | None, eos_ids: tuple[int, ...], max_positions: int,
                 max_segments: int | None, side_by_side_paths: bool):
        """``side_by_side_paths``: the decode backend reads a request's paths in place from side-by-side
        page blocks (``DecodeBackend.side_by_side_paths``), so their pages are handed out that way."""
        self.pool = pool
        self.control = control
        self.eos_ids = eos_ids
        self.max_positions = max_positions  # the model's context
        self.max_segments = max_segments  # thought-embedding rows (None: no thought embeddings)
        self.side_by_side_paths = side_by_side_paths
        self.waiting: deque[Request] = deque()  # checked and queued, in arrival order
        self.running: list[Request] = []
        self._banned_plain = torch.tensor(control.all_ids if control else (), dtype=torch.long)

    def check(self, spec: RequestSpec) -> int:
        """Validate a request against the model/tokenizer; return its worst-case page count."""
        pp, L = spec.parallel, len(spec.prompt_ids)
        if L == 0:
            raise ConfigError("empty prompt")
        if pp.mode in ("parathinker", "reprefill"):
            if self.control is None:
                raise TokenizerError(
                    "this tokenizer has no ParaThinker control tokens: run `parathinker prepare` on the model, "
                    "or use mode=sequential or mode=majority"
                )
            if pp.num_paths > self.control.max_paths:
                raise ConfigError(
                    f"num_paths={pp.num_paths} but the tokenizer has only <think1>..<think{self.control.max_paths}>: "
                    f"use at most {self.control.max_paths} paths (or `parathinker prepare --num-paths N`)"
                )
            ms = self.max_segments
            if pp.thought_embeddings and ms and pp.num_paths >= ms:
                raise ConfigError(f"num_paths={pp.num_paths} needs thought embeddings up to {pp.num_paths}; the model has {ms}")
        budget = spec.path_budget
        summary_len = 1 + len(spec.summary_prefix_ids) + pp.summary_max_tokens
        if spec.forced_summary is not None:
            summary_len = 1 + len(spec.forced_summary)
        ctx = self.max_positions
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
                "lower max_path_tokens / summary_max_tokens"
            )
        self.pool.check_fits(pages)
        return pages

    def admit(self) -> list[Request]:
        """Waiting requests whose worst-case pages fit now, in arrival order (their pages reserved); they run."""
        admitted = []
        while self.waiting and self.pool.can_admit(self.waiting[0].need):
            req = self.waiting.popleft()
            self.pool.admit(req.id, req.need)
            admitted.append(req)
        return admitted

    def prompt_chunks(self, reqs: list[Request]) -> list[Chunk]:
        """The prompts of newly admitted requests, one chunk each, in fresh prompt runs."""
        chunks = []
        for req in reqs:
            req.mark("start")
            L = req.prompt_len
            req.prompt_run = self.pool.new_run()
            slots = self.pool.extend(req.prompt_run, L, req.id)
            chunks.append(Chunk(req.spec.prompt_ids, list(range(L)), [0] * L, slots, [req.prompt_run]))
        return chunks

    def start_paths(self, req: Request) -> list[Seq]:
        """The request's paths (or samples) after its prompt. Returns the sequences whose first token is
        drawn from the prompt's last logits (samples; a path starts with its forced <think i>)."""
        req.phase = "paths"
        pp = req.pp
        blocks = self._path_blocks(req)
        if pp.mode in ("sequential", "majority"):
            ends = frozenset() if req.spec.sampling.ignore_eos else frozenset(self.eos_ids)
            for k in range(pp.paths_per_request):
                req.seqs.append(self._new_seq(req, "sample", k + 1, k, self._banned_plain, ends, blocks[k]))
            return req.seqs
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
        return []

    def _new_seq(self, req: Request, role: Role, index: int, order: int, banned: torch.Tensor,
                 end_ids: frozenset[int], pages: list[int] | None = None) -> Seq:
        assert req.prompt_run is not None
        own = self.pool.new_run(pages)
        reads = [self.pool.share(req.prompt_run), own]
        return Seq(req, role, index, order, reads, own, 0, banned, end_ids, req.spec.path_budget)

    def start_summary(self, req: Request) -> None:
        """The summary after the paths: it reads the prompt's and every path's KV (or a re-prefill of them)."""
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
            s.next_position, s.packed_len = packed.positions[-1] + 1, len(packed)
        else:
            reads = [self.pool.share(req.prompt_run)] + [self.pool.share(p.own) for p in req.seqs] + [own]
            s = Seq(req, "summary", 0, 0, reads, own, 0, banned, frozenset(c.summary_end_ids()), budget)
            s.pending = [c.summary_open, *prefix]
        if req.spec.forced_summary is not None:
            s.forced = list(req.spec.forced_summary)
        req.summary = s

    def advance(self, req: Request) -> None:
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
                self.start_summary(req)
        elif req.phase == "summary" and req.summary is not None and req.summary.finished:
            req.mark("summary")
            req.phase = "done"

    def _quorum(self, req: Request) -> int:
        if req.spec.forced_paths is not None:
            return len(req.seqs)
        return req.pp.finish_quorum

    def live(self, req: Request) -> list[Seq]:
        """The sequences of a request that decode in its current phase."""
        if req.phase == "paths":
            return req.seqs
        if req.phase == "summary" and req.summary is not None:
            return [req.summary]
        return []

    def chunk(self, s: Seq) -> Chunk:
        """A sequence's pending tokens as a chunk: slots taken from its own run, positions from the layout."""
        req, n = s.req, len(s.pending)
        slots = self.pool.extend(s.own, n, req.id)
        if s.pending_positions is not None:
            pos, seg = s.pending_positions, s.pending_segments or [0] * n
        elif n == 1:
            pos, seg = [self._position(s, s.num_cached)], [s.segment]
        else:
            pos = [self._position(s, s.num_cached + j) for j in range(n)]
            seg = [s.segment] * n
        # paths and samples read their request's prompt run first: a prefix shared with their siblings
        shared = s.role == "path" or s.role == "sample"
        chunk = Chunk(s.pending, pos, seg, slots, s.reads, s.kinds, shared)
        req.stats["path_tokens" if shared else self._stat_key(s)] += n
        s.num_cached += n
        s.pending, s.pending_positions, s.pending_segments, s.kinds = [], None, None, None
        return chunk

    @staticmethod
    def _stat_key(s: Seq) -> str:
        if s.role == "reprefill" and s.kinds is not None:
            return "reprefill_tokens"  # the packed re-computation; the summary's own decoding counts as summary
        return "path_tokens" if s.role in ("path", "sample") else "summary_tokens"

    def _position(self, s: Seq, t: int) -> int:
        req = s.req
        L = req.prompt_len
        if s.role == "path":
            return req.layout.path_position(L, s.order, t, req.stride)
        if s.role == "summary":
            lens = [p.num_cached for p in req.seqs]  # every path is closed and cached by now
            return req.layout.summary_position(L, lens, t, req.stride)
        if s.role == "reprefill":  # decoding after the packed chunk, which carried its own positions
            assert s.next_position is not None
            return s.next_position + t - s.packed_len
        return L + t  # plain sample

    def rollback(self, s: Seq) -> None:
        """Undo ``chunk`` of a one-token step: the slot and position go to the next token fed."""
        s.num_cached -= 1
        self.pool.shrink(s.own, 1)
        s.req.stats[self._stat_key(s)] -= 1

    def accept(self, s: Seq, tok: int, logprob: float) -> None:
        """A drawn (or forced) token: the sequence ends (end token, budget) or feeds it next."""
        if tok in s.end_ids:
            s.end_logprob = logprob
            s.finish("end")
            if s.role == "path":
                s.pending = [self.control.think_close[s.index - 1]]  # type: ignore[union-attr]
            return
        if s.role == "path" and len(s.body) >= s.budget:  # budget spent: close it instead of this token
            s.finish("length")
            s.pending = [self.control.think_close[s.index - 1]]  # type: ignore[union-attr]
            return
        s.body.append(tok)
        s.logprobs.append(logprob)
        if s.role != "path" and len(s.body) >= s.budget:
            s.finish("length")  # nothing follows: no need to run the last token through the model
            return
        s.pending = [tok]

    def release(self, req: Request, forwards: int) -> None:
        """A finished request: its pages back, its timings and the runner's forward count in its stats."""
        req.mark("end")
        self.free(req)
        m, st = req.marks, req.stats
        st["time_prefill"] = m["prefill"] - m["start"]
        st["time_paths"] = m.get("paths", m["end"]) - m["prefill"]
        st["time_summary"] = m["end"] - m["paths"] if "summary" in m else 0.0
        st["time_total"] = m["end"] - m["start"]
        st["forwards"] = forwards

    def free(self, req: Request) -> None:
        """Return a request's pages and what is left of its reservation."""
        for s in [*req.seqs, *([req.summary] if req.summary else [])]:
            for r in s.reads:
                self.pool.release(r)
        if req.prompt_run is not None:
            self.pool.release(req.prompt_run)
        self.pool.finish(req.id)

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
        block = self.pool.take_block(n * k, req.id) if self.side_by_side_paths and n > 1 else None
        return [block[i * k : (i + 1) * k] if block else None for i in range(n)]
