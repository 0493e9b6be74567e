"""The draws: a step's tokens sampled on the device, one host copy, exact redraws, overlapped decoding.

``draw`` launches sampling (per-request generators, bans, forced tokens when scoring) where the
logits are and starts ONE asynchronous copy of the ids, log-probs and redraw flags to the host;
``take`` waits for it, redraws exactly the rare rows whose top-p nucleus was wider than the
sampler's window, and hands each token to the scheduler (``Scheduler.accept``). On CUDA,
``overlap_step`` launches step n+1 before step n's tokens are read on the host (rows whose token
ended or cut them are rolled back; a step whose fed token was redrawn is discarded and re-run):
the synchronous loop's tokens, with the host's bookkeeping hidden behind the GPU's work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .plan import Feed
from .runner import ModelRunner
from .sampler import Row, resample_exact, sample_tensor
from .scheduler import Scheduler
from .sequence import Request, Seq


@dataclass
class Drawn:
    """One step's draws, launched on the device; ``Draws.take`` reads them on the host and accepts them."""

    seqs: list[Seq]  # the rows drawn, in order
    done: set[int]  # rows whose forced tokens ran out (scoring)
    rows: list[Row]  # the sampled rows' params (``free`` indexes them)
    free: list[int]
    tokens: torch.Tensor  # (len(seqs),) ids on the device: the next step's inputs
    packed: torch.Tensor  # (2 or 3, len(seqs)) float64: ids, log-probs, redraw flags (host copy on CUDA)
    event: torch.cuda.Event | None  # the host copy is complete
    logits: torch.Tensor | None  # float32 logits for an exact redraw (None: no row can need one)
    lse: torch.Tensor  # (len(seqs),) their log-sum-exp


class Draws:
    """A step's draws and, on CUDA, the step whose draws are still in flight."""

    def __init__(self, scheduler: Scheduler, runner: ModelRunner):
        self.scheduler = scheduler
        self.runner = runner
        self.inflight: Drawn | None = None  # the last step's draws, not yet read (overlap)
        self.redrawn_rows = 0  # rows drawn again exactly (a top-p nucleus wider than the sampler's window)
        self.discarded_steps = 0  # overlapped steps thrown away and re-run (an exact redraw changed an input)

    def consume(self, seqs: list[Seq], logits: torch.Tensor) -> None:
        """Pick the next token of each sequence that still decodes (sampled, or forced when scoring) and accept it."""
        drawn = self.draw(seqs, logits)
        if drawn is not None:
            self.take(drawn)

    def draw(self, seqs: list[Seq], logits: torch.Tensor, keep_logits: bool = False) -> Drawn | None:
        """Launch the draws of ``seqs`` that still decode; nothing waits for the device.

        ``logits`` (len(seqs), V) stay on the device: sampling and the log-probs happen there, and
        the chosen ids, their log-probs and the redraw flags leave for the host in one copy
        (asynchronous on CUDA; ``take`` waits for it). ``keep_logits``: the next forward may
        overwrite ``logits`` before ``take`` (a replayed graph's output), so a rare exact redraw
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
        unsure = None  # rows whose top-p window may have been too narrow (sampler): redrawn in ``take``
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

    def take(self, d: Drawn) -> bool:
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
                self.scheduler.accept(s, int(ids[k]), lps[k])
        return bool(redo)

    def overlap_step(self, active: list[Request]) -> bool:
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
        prev = self.inflight
        carried = set(prev.seqs) if prev is not None else set()
        seqs = [s for r in active for s in self.scheduler.live(r) if s.pending or s in carried]
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
        chunks = [self.scheduler.chunk(s) for s in seqs]
        logits = self.runner.forward(chunks, Feed(prev.tokens, dst, src) if prev is not None else None)
        redrawn = False
        if prev is not None:
            self.inflight = None
            redrawn = self.take(prev)  # the host reads step n-1 while the GPU runs step n
        for r in active:
            self.scheduler.advance(r)
        fed = set(dst)
        if redrawn:  # a token fed on the device was replaced: roll the whole step back, run it synchronously
            for k, (s, c) in enumerate(zip(seqs, chunks)):
                self.scheduler.rollback(s)
                if k not in fed:
                    s.pending = list(c.tokens)
            self.discarded_steps += 1
            return False
        live = []
        for k, s in enumerate(seqs):
            # a carried row continues when its drawn token was accepted as its next input (else it has finished)
            if k in fed and (s.finished or len(s.pending) != 1):
                self.scheduler.rollback(s)
                continue
            if k in fed:
                s.pending = []  # that token is in this step's forward
            if not s.finished:
                live.append(k)
        if live:
            sub = logits if len(live) == len(seqs) else logits.index_select(0, torch.tensor(live, device=logits.device))
            self.inflight = self.draw([seqs[k] for k in live], sub, keep_logits=sub is logits)
        return True

    def drain(self, active: list[Request]) -> None:
        """Read and accept the draws in flight (overlap), as the synchronous loop would have."""
        if self.inflight is not None:
            prev, self.inflight = self.inflight, None
            self.take(prev)
            for r in active:
                self.scheduler.advance(r)
