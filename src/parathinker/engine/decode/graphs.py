"""Decode steps with static shapes: persistent metadata buffers per batch bucket, one CUDA graph each.

A decode step (one new token per row) of B rows runs in the smallest bucket >= B (1, 2, 4, 8, 16,
24, 32, 48, 64, 96, ...). Each bucket owns ONE flat int32 buffer on the host (pinned on CUDA) and
its twin on the device, viewed as the step's inputs:

    ids, positions, segments, slot mapping          (bucket,)        rows >= B: token 0 at the null slot 0
    shared lists: page tables, lengths, rows        (Ls, Ps) (Ls,) (Ls, Qs)   a prompt read by sibling rows
    single lists: page tables, lengths, rows        (L1, P1) (L1,) (L1, 1)    every other run a row reads
    row entries                                     (bucket, K)      which partials each row merges

A step fills the host buffer from the block manager's runs (page ids, never per-slot lists), copies
it to the device in ONE transfer, then runs ``model.hidden`` + ``model.logits`` over the whole
bucket. Padded rows write their K/V to slot 0 (page 0 is the pool's padding sink), appear in no
list and merge nothing. On CUDA (triton attention, ``CacheConfig.cuda_graphs``) that forward is
captured once per bucket on first use, after two warm-up runs, in one shared graph memory pool,
and replayed afterwards: a step costs one copy and one graph launch instead of ~20 kernel launches
per layer. The same code runs eagerly (no capture) elsewhere, which is how the CPU tests check the
padded static path against the reference backend.

Capacities (lists, rows per shared list, pages per list, entries per row) start at what the first
step needs, rounded up (pages: at least ``MIN_TOKENS`` worth); a step that needs more grows them
(doubling) and the bucket is re-captured on its next use. Batches above ``max_graph_batch`` run the
same static path without capture.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import torch

from ..attention.triton import TritonDecode
from ..block_manager import Run
from ..plan import Caps, Chunk, DecodeLists, Feed, Plan
from .fused import FusedDecoder

log = logging.getLogger(__name__)

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)
MIN_TOKENS = 2048  # page tables start this long, so short contexts never re-capture
MAX_QG = 128  # (query rows x heads per kv head) of a shared list: the kernel's register tile
# programs per class the splits aim at: fill a GPU; in Triton's CPU interpreter every program costs
# milliseconds, so there only a single small list gets split (enough for the tests to cover it)
SPLIT_TARGET = {"cuda": 512}
SPLIT_TARGET_OTHER = 4


def bucket_for(n: int) -> int:
    for b in BUCKETS:
        if b >= n:
            return b
    return -(-n // 64) * 64


@dataclass
class Buffers:
    """One bucket's step inputs (see the module docstring), as views of one flat int32 buffer."""

    ids: Any  # (B, 1) token ids
    positions: Any  # (B, 1)
    segments: Any  # (B, 1) segment ids
    slots: Any  # (B,) where each row's new K/V go
    shared_pages: Any  # (shared lists, pages) page tables of the lists several rows read
    shared_lens: Any  # (shared lists,) tokens per list
    shared_rows: Any  # (shared lists, rows) rows reading each list, -1 padded
    single_pages: Any  # (single lists, pages)
    single_lens: Any  # (single lists,)
    single_rows: Any  # (single lists, 1)
    row_entries: Any  # (B, entries) which partials each row merges, sentinel padded


class DecodeState:
    """One bucket's buffers (host + device), its attention backend, and its graph once captured."""

    def __init__(self, rows: int, caps: Caps, kv_heads: int, device: torch.device):
        target = SPLIT_TARGET.get(device.type, SPLIT_TARGET_OTHER)
        self.rows, self.caps, self.device = rows, caps, device
        B, c = rows, caps
        shapes = dict(ids=(B, 1), positions=(B, 1), segments=(B, 1), slots=(B,),
                      shared_pages=(c.shared_lists, c.shared_pages), shared_lens=(c.shared_lists,),
                      shared_rows=(c.shared_lists, c.shared_rows), single_pages=(c.single_lists, c.single_pages),
                      single_lens=(c.single_lists,), single_rows=(c.single_lists, 1), row_entries=(B, c.row_entries))
        offsets, n = {}, 0
        for name, shape in shapes.items():
            offsets[name] = n
            n += -(-int(np.prod(shape)) // 16) * 16  # 64-byte aligned fields
        pin = device.type == "cuda"
        self.host = torch.zeros(n, dtype=torch.int32, pin_memory=pin)
        self.dev = torch.zeros(n, dtype=torch.int32, device=device)
        self._np = self.host.numpy()
        # the fields as views of the two flat buffers: numpy on the host (filled per step), tensors on the device
        self.host_views = Buffers(**{k: self._np[o : o + int(np.prod(shapes[k]))].reshape(shapes[k])
                                     for k, o in offsets.items()})
        self.views = Buffers(**{k: self.dev[o : o + int(np.prod(shapes[k]))].view(shapes[k]) for k, o in offsets.items()})
        self.classes = []
        if c.shared_lists:
            self.classes.append(DecodeLists(self.views.shared_pages, self.views.shared_lens, self.views.shared_rows,
                                            _splits(c.shared_lists * kv_heads, target, 32)))
        self.classes.append(DecodeLists(self.views.single_pages, self.views.single_lens, self.views.single_rows,
                                        _splits(c.single_lists * kv_heads, target, 64)))
        self.sentinel = c.shared_lists * c.shared_rows + c.single_lists
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None
        self._copied: torch.cuda.Event | None = None

    def fill(self, plan: Plan) -> None:
        """Write the step into the host buffer (rows past the batch padded) and send it in one copy."""
        if self._copied is not None:
            self._copied.synchronize()  # the previous step's copy has left the pinned buffer
        h, c, R = self.host_views, self.caps, len(plan.ids)
        for arr, vals in ((h.ids, plan.ids), (h.positions, plan.positions), (h.segments, plan.segments),
                          (h.slots, plan.slots)):
            arr = arr.reshape(-1)
            arr[:R] = vals
            arr[R:] = 0
        per_row: list[list[int]] = [[] for _ in range(R)]
        h.shared_lens[:] = 0
        h.shared_rows[:] = -1
        for i, (run, rows) in enumerate(plan.shared):
            h.shared_lens[i] = run.length
            h.shared_rows[i, : len(rows)] = rows
            for j, r in enumerate(rows):
                per_row[r].append(i * c.shared_rows + j)
        _scatter_pages(h.shared_pages, [run for run, _ in plan.shared])
        h.single_lens[:] = 0
        h.single_rows[:] = -1
        base = c.shared_lists * c.shared_rows
        for i, (_, r) in enumerate(plan.single):
            per_row[r].append(base + i)
        n1 = len(plan.single)
        if n1:
            h.single_lens[:n1] = [run.length for run, _ in plan.single]
            h.single_rows[:n1, 0] = [r for _, r in plan.single]
        _scatter_pages(h.single_pages, [run for run, _ in plan.single])
        ent = h.row_entries
        ent[:] = self.sentinel
        for r, es in enumerate(per_row):
            ent[r, : len(es)] = es
        self.dev.copy_(self.host, non_blocking=True)
        if self.device.type == "cuda":
            self._copied = torch.cuda.Event()
            self._copied.record()

    def attention(self, cache: torch.Tensor, page_size: int, merge_kernel: bool) -> TritonDecode:
        return TritonDecode(cache, self.views.slots, self.classes, self.views.row_entries, page_size, merge_kernel)


def _splits(programs: int, target: int, most: int) -> int:
    """Splits per list so that the grid has about ``target`` programs (a power of two in [1, most])."""
    s = max(1, target // max(1, programs))
    return min(most, 1 << (s.bit_length() - 1))


def _scatter_pages(table: np.ndarray, runs: list[Run]) -> None:
    """Row i of ``table`` starts with runs[i]'s page ids (the rest is never read: lengths bound the kernel)."""
    if not runs:
        return
    counts = np.fromiter((len(r.pages) for r in runs), dtype=np.int64, count=len(runs))
    flat = np.fromiter(chain.from_iterable(r.pages for r in runs), dtype=np.int32, count=int(counts.sum()))
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    rows = np.repeat(np.arange(len(runs)), counts)
    table[rows, np.arange(len(flat)) - starts] = flat


class DecodeGraphs:
    """Decode steps through per-bucket static buffers and the Triton kernel; CUDA graphs captured and replayed
    when enabled (a ``backend.DecodeBackend``)."""

    name = "triton"
    side_by_side_paths = False  # the kernel reads pages through page tables: any layout

    def __init__(self, model, cache: torch.Tensor, page_size: int, num_pages: int,  # noqa: ANN001 - the model
                 use_graphs: bool, max_graph_batch: int, fused: FusedDecoder | None = None):
        cfg = model.config
        self.model = model
        self.fused = fused  # the fused decode forward (else the model's modular one)
        self._head = fused or model  # the LM head of every forward (kept if the fused step is switched off)
        self.cache = cache
        self.page_size = page_size
        self.device = model.device
        self.kv_heads = cfg.num_kv_heads
        self.max_q = max(1, MAX_QG // (cfg.num_heads // cfg.num_kv_heads))
        self.max_pages = num_pages  # a run never holds more pages than the pool (a re-prefill run can pass the context)
        self.min_pages = min(self.max_pages, -(-MIN_TOKENS // page_size))
        self.use_graphs = use_graphs and self.device.type == "cuda"
        self.max_graph_batch = max_graph_batch
        self.states: dict[int, DecodeState] = {}
        self.pool = None
        self.stats = dict(captures=0, replays=0, eager=0)
        self.error: str | None = None  # why graphs were switched off, if they were
        self.fused_error: str | None = None  # why the fused step was switched off, if it was
        self._fused_ran = False  # the fused step has run once (its kernels compiled) on this machine

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._head.logits(hidden)

    def set_cache(self, cache: torch.Tensor, num_pages: int) -> None:
        """A new (grown) pool: buffers sized to the new page count and graphs captured over it, as needed."""
        for st in self.states.values():
            if st.graph is not None:
                st.graph.reset()
        self.states = {}
        self.cache, self.max_pages = cache, num_pages
        self.min_pages = min(self.max_pages, -(-MIN_TOKENS // self.page_size))

    def decode(self, chunks: list[Chunk], feed: Feed | None = None) -> torch.Tensor:
        """Logits (len(chunks), V) of one decode step (valid until the next decode step); ``feed``: see ``plan.Feed``."""
        plan = Plan.from_chunks(chunks, self.max_q)
        n = len(chunks)
        B = bucket_for(n)
        st = self.states.get(B)
        need = plan.need()
        if st is None or not st.caps.covers(need):
            old = st.caps if st is not None else Caps(0, 0, 0, 0, 0, 0)
            caps = old.grown(need, self.min_pages, self.max_pages, self.max_q)
            if st is not None and st.graph is not None:
                st.graph.reset()
            st = self.states[B] = DecodeState(B, caps, self.kv_heads, self.device)
        st.fill(plan)
        if feed is not None:
            feed.apply(st.views.ids)
        if self.use_graphs and self.max_graph_batch >= B:
            if st.graph is None:
                self._capture(st)
            if st.graph is not None:
                st.graph.replay()
                self.stats["replays"] += 1
                return st.out[:n]  # type: ignore[index]
        self.stats["eager"] += 1
        return self._forward(st)[:n]

    def _forward(self, st: DecodeState) -> torch.Tensor:
        if self.fused is not None and not self._fused_ran:  # its kernels' first run (compilation) may fail here
            try:
                out = self._forward_with(st, self.fused)
                self._fused_ran = True
                return out
            except Exception as e:  # noqa: BLE001 - e.g. a kernel this GPU/Triton cannot compile: keep serving
                self.fused_error = f"{type(e).__name__}: {e}"
                self.fused = None
                log.warning("fused decode step failed (%s); decoding with the modular step", self.fused_error)
        return self._forward_with(st, self.fused)

    def _forward_with(self, st: DecodeState, fused: FusedDecoder | None) -> torch.Tensor:
        attn = st.attention(self.cache, self.page_size, merge_kernel=fused is not None)
        if fused is not None:
            return fused.logits(fused.hidden(st.views.ids, st.views.positions, st.views.segments, attn))
        hidden = self.model.hidden(st.views.ids, st.views.positions, st.views.segments, attn)  # (B, 1, D)
        return self.model.logits(hidden[:, 0])  # (B, V) float32

    def _capture(self, st: DecodeState) -> None:
        """Warm up (compiles the kernels) and capture the bucket's forward; on failure, say why and go eager.

        Warm-up and capture run on the step's real inputs: rewriting a token's K/V with the same
        values is harmless, and the replay that follows computes this step.
        """
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._forward(st)
            torch.cuda.current_stream(self.device).wait_stream(side)
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = self._forward(st)
            st.graph, st.out = graph, out
            self.stats["captures"] += 1
        except Exception as e:  # noqa: BLE001 - any capture failure: keep serving, eagerly
            self.error = f"{type(e).__name__}: {e}"
            self.use_graphs = False
            st.graph, st.out = None, None
            log.warning("CUDA graph capture failed (%s); decoding without graphs", self.error)
            try:
                torch.cuda.synchronize(self.device)
            except Exception as e2:  # noqa: BLE001 - a broken context will fail the eager step too, visibly
                self.error += f"; then {type(e2).__name__}: {e2}"
