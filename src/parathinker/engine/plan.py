"""What one forward computes, in the types every part of the engine shares (this module imports none of theirs).

``Chunk``: one sequence's new tokens for a forward (the scheduler makes them, the runner runs them);
``Feed``: decode inputs already on the device (overlapped decoding); ``Plan``: a decode step in run
terms (which rows share which list) and ``Caps`` the buffer capacities it needs; ``DecodeLists``: one class of the Triton kernel's work lists;
``StepMetadata``: the reference backend's slots and mask.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from itertools import chain

import torch

from .block_manager import Run


@dataclass
class Chunk:
    """New tokens of one sequence for one forward. Their slots are already allocated (end of the last run)."""

    tokens: list[int]
    positions: list[int]
    segments: list[int]
    new_slots: list[int]
    reads: list[Run]  # the runs it reads, in order; its own run (holding the new tokens) last
    kinds: torch.Tensor | None = None  # re-prefill: layout kinds of its last m >= n keys (new tokens last); None = causal
    shared_prefix: bool = False  # reads[0] is a prompt run its sibling sequences read too


@dataclass
class Feed:
    """Decode inputs already on the device: row ``dst[i]`` of a step takes ``tokens[src[i]]`` (overlapped decoding)."""

    tokens: torch.Tensor  # (N,) long, the previous step's draws
    dst: list[int]
    src: list[int]

    def apply(self, ids: torch.Tensor) -> None:
        """Write the fed tokens into ``ids`` ((B, 1), on the device), in stream order before the forward."""
        if not self.dst:
            return
        n = len(self.dst)
        if self.dst == self.src == list(range(n)):  # the steady state: every row continues, in the same order
            ids[:n, 0].copy_(self.tokens[:n])
            return
        dev = ids.device
        at = torch.tensor(self.dst, device=dev)
        ids[:, 0].index_copy_(0, at, self.tokens.index_select(0, torch.tensor(self.src, device=dev)).to(ids.dtype))


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@dataclass(frozen=True)
class Caps:
    """Capacities of one bucket's buffers (see the module docstring)."""

    shared_lists: int  # lists read by several rows (a shared prompt; 0: none)
    shared_rows: int  # rows per shared list
    shared_pages: int  # pages per shared list
    single_lists: int  # lists read by one row
    single_pages: int  # pages per single list
    row_entries: int  # partials a row merges

    def covers(self, other: Caps) -> bool:
        return all(getattr(self, f.name) >= getattr(other, f.name) for f in fields(self))

    def grown(self, need: Caps, min_pages: int, max_pages: int, max_q: int) -> Caps:
        """Every field at least what ``need`` asks, rounded up to a power of two (pages: a floor)."""

        def up(old: int, n: int, floor: int = 0) -> int:
            return old if n <= old else max(_pow2(n), floor, 2 * old)

        return Caps(
            shared_lists=up(self.shared_lists, need.shared_lists),
            shared_rows=min(max_q, up(self.shared_rows, need.shared_rows)),
            shared_pages=min(max_pages, up(self.shared_pages, need.shared_pages, min_pages)),
            single_lists=up(self.single_lists, max(1, need.single_lists)),
            single_pages=min(max_pages, up(self.single_pages, need.single_pages, min_pages)),
            row_entries=up(self.row_entries, need.row_entries),
        )


@dataclass
class Plan:
    """One decode step in run terms: what each row writes and which lists it reads."""

    ids: list[int]
    positions: list[int]
    segments: list[int]
    slots: list[int]
    shared: list[tuple[Run, list[int]]]  # (run, rows) read by several rows
    single: list[tuple[Run, int]]  # (run, row)

    @classmethod
    def from_chunks(cls, chunks: list[Chunk], max_rows: int) -> Plan:
        """Rows whose first run is a prompt their siblings read too share one list (up to ``max_rows`` rows)."""
        groups: dict[int, list[int]] = {}
        for b, c in enumerate(chunks):
            if c.shared_prefix:
                groups.setdefault(id(c.reads[0]), []).append(b)
        shared: list[tuple[Run, list[int]]] = []
        in_shared = set()
        for rows in groups.values():
            if len(rows) > 1:
                run = chunks[rows[0]].reads[0]
                shared.extend((run, rows[i : i + max_rows]) for i in range(0, len(rows), max_rows))
                in_shared.update(rows)
        single = [(r, b) for b, c in enumerate(chunks) for r in (c.reads[1:] if b in in_shared else c.reads) if r.length]
        return cls([c.tokens[0] for c in chunks], [c.positions[0] for c in chunks], [c.segments[0] for c in chunks],
                   [c.new_slots[0] for c in chunks], shared, single)

    def need(self) -> Caps:
        """The buffer capacities this step needs."""
        per_row = [0] * len(self.ids)
        for _, rows in self.shared:
            for r in rows:
                per_row[r] += 1
        for _, r in self.single:
            per_row[r] += 1
        return Caps(
            shared_lists=len(self.shared), shared_rows=max((len(r) for _, r in self.shared), default=0),
            shared_pages=max((len(run.pages) for run, _ in self.shared), default=0), single_lists=len(self.single),
            single_pages=max((len(run.pages) for run, _ in self.single), default=0), row_entries=max(per_row, default=0),
        )


@dataclass
class DecodeLists:
    """One class of work lists: L lists, at most P pages and Q query rows each, read in ``splits`` parts."""

    pages: torch.Tensor  # (L, P) int32 page ids (only the first ceil(len / page_size) of a row are read)
    lens: torch.Tensor  # (L,) int32 tokens per list (0: an unused list, no work)
    rows: torch.Tensor  # (L, Q) int32 query rows reading the list, padded with -1
    splits: int




@dataclass
class StepMetadata:
    """Everything one forward needs to know about where K/V live. B rows, T new tokens max, S keys max."""

    slot_mapping: torch.Tensor  # (B, T) long: where each new token's k', v' go (padding -> slot 0, the null page)
    kv_slots: torch.Tensor  # (B, S) long: the slots each row reads, its new tokens last (padding -> 0)
    bias: torch.Tensor  # (B, 1, T, S) float additive mask


def padded_inputs(chunks: list[Chunk], T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T) long token ids, positions, segment ids, zero padded: one tensor each from flat lists."""
    if T == 1:  # flat lists: torch.tensor parses a nested list element by element, holding the GIL
        return tuple(torch.tensor([getattr(c, f)[0] for c in chunks]).view(-1, 1)
                     for f in ("tokens", "positions", "segments"))
    lens = [len(c.tokens) for c in chunks]
    rows = torch.repeat_interleave(torch.arange(len(chunks)), torch.tensor(lens))
    cols = torch.cat([torch.arange(n) for n in lens])
    out = []
    for f in ("tokens", "positions", "segments"):
        t = torch.zeros(len(chunks), T, dtype=torch.long)
        t[rows, cols] = torch.tensor(list(chain.from_iterable(getattr(c, f) for c in chunks)))
        out.append(t)
    return out[0], out[1], out[2]
