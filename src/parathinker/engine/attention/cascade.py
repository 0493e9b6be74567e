"""The torch decode backend (the CPU default): a request's shared prompt read once for all its rows.

``PagedCascade``: rows grouped by the prompt they share (the grouping rule of ``plan.Plan``), each
row's private keys apart (read in place through one ``Strided`` view when they lie in side-by-side
blocks), partials merged by log-sum-exp. ``RunsInPlace``: a lone row (a summary) over long runs that
lie in place. Both follow ``base.DecodeAttention``: the fused step stores K/V and calls ``attend``.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import torch

from ...model.attention import sdpa
from ..block_manager import Run
from ..plan import Chunk, Plan
from .base import write_kv

# A request's rows read their shared prompt as a group when that saves at least CASCADE_MIN_GROUP_KEYS key
# reads ((rows - 1) x prompt length), and only if the step's groups save CASCADE_MIN_SAVED_KEYS together: the
# groups' extra ops (a second partial softmax, the merge) have a fixed cost per step and a cost per group that
# reading short prompts once per row undercuts on the CPU. Measured (benchmarks/cascade_grouping.py, with the
# flash partials): one request crosses over near 500-1000 saved reads, 16 requests near 100 per group.
CASCADE_MIN_GROUP_KEYS = 100
CASCADE_MIN_SAVED_KEYS = 512
# A lone row whose reads lie in place (a summary over its paths' side-by-side blocks) reads them there, run by
# run, from this many keys on; below it one gather and one attention call cost less (benchmarks/cascade_inplace.py).
IN_PLACE_MIN_KEYS = 4096


@dataclass(frozen=True)
class Strided:
    """Rows' private keys read in place: row b's are the ``width`` slots from ``start + b * stride``
    (one row: its consecutive slots; a request's paths: side-by-side page blocks, ``PagePool.take_block``)."""

    start: int
    stride: int
    width: int


def _strided(per_row: list[list[int]], num_slots: int) -> Strided | None:
    """The rows' slots as one ``Strided`` view of a pool of ``num_slots``, if each row's are consecutive and
    the rows' starts are evenly spaced (a shorter row's view runs past its slots, masked, inside the pool)."""
    if not all(_consecutive(r) for r in per_row):
        return None
    starts, width = [r[0] for r in per_row], max(len(r) for r in per_row)
    stride = starts[1] - starts[0] if len(starts) > 1 else width
    if stride < width or starts[-1] + width > num_slots or any(b - a != stride for a, b in zip(starts, starts[1:])):
        return None
    return Strided(starts[0], stride, width)


def _stretches(cache: torch.Tensor, s: Strided, n: int) -> torch.Tensor:
    """Every layer's ``n`` stretches of ``s`` as a view of the pool: (L, 2, n, width, KVH, hd), no copy."""
    st = cache.stride()
    return cache.as_strided((*cache.shape[:2], n, s.width, *cache.shape[3:]), (st[0], st[1], s.stride * st[2], *st[2:]),
                            cache.storage_offset() + s.start * st[2])


def _shorter_masked(lens: list[int], width: int) -> torch.Tensor | None:
    """(n, width) valid keys of stretches holding ``lens`` keys each; None when every one is full."""
    return None if min(lens) == width else torch.arange(width)[None, :] < torch.tensor(lens)[:, None]


class _WriteThenAttend:
    """The modular model's per-layer call of a torch decode backend: store the rows' new k', v', then ``attend``."""

    cache: torch.Tensor
    slot_mapping: torch.Tensor

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        write_kv(self.cache[layer], self.slot_mapping, k, v)
        return self.attend(layer, q[:, 0])[:, None]

    def attend(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class RunsInPlace(_WriteThenAttend):
    """Decode attention of one row over runs it reads in place: a summary reading its prompt, its paths'
    side-by-side blocks (one ``Strided`` view, shorter paths masked) and its own tokens. Each part is a
    flash partial (the paths' in one call, the query repeated per path) and the partials are merged by
    log-sum-exp: no gather of the paths' keys, which for long paths costs more than the attention."""

    def __init__(self, cache: torch.Tensor, slot_mapping: torch.Tensor, parts: list[tuple[Strided, int, torch.Tensor | None]]):
        self.cache = cache
        self.slot_mapping = slot_mapping  # (1,)
        # per part (``n`` stretches of the pool): every layer's (L, 2, n, KVH, W, hd) view, and its key bias
        self.parts = [(_stretches(cache, p, n).transpose(3, 4), _key_bias(valid, torch.float32)) for p, n, valid in parts]

    def attend(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """q (1, H, D), the row's new K/V already stored -> (1, H, D)."""
        _, H, D = q.shape
        KVH = self.cache.shape[3]
        qf = q.view(1, KVH, H // KVH, D).float()
        outs, lses = [], []
        for view, bias in self.parts:
            keys, vals = view[layer].float()  # (N, KVH, W, D)
            o, lse = _partial_attention(qf.expand(keys.shape[0], -1, -1, -1), keys, vals, None, bias, transposed=True)
            outs.append(o)
            lses.append(lse)
        lse = torch.cat(lses)  # (parts' stretches, KVH, G)
        w = torch.exp(lse - lse.amax(0))[..., None]
        return ((torch.cat(outs) * w).sum(0) / w.sum(0)).to(q.dtype).reshape(1, H, D)


def _in_place_parts(reads: list[Run], num_slots: int) -> list[tuple[Strided, int, torch.Tensor | None]] | None:
    """A lone row's reads as parts read in place, (stretches, how many, valid keys or None): [prompt,
    side-by-side paths, own], each run consecutive, the paths evenly spaced, at least ``IN_PLACE_MIN_KEYS``
    keys together; None otherwise."""
    if len(reads) < 3 or sum(r.length for r in reads) < IN_PLACE_MIN_KEYS:
        return None
    first, middle, last = reads[0].slot_list, [r.slot_list for r in reads[1:-1]], reads[-1].slot_list
    paths = _strided(middle, num_slots)
    if paths is None or not _consecutive(first) or not _consecutive(last):
        return None
    valid = _shorter_masked([len(m) for m in middle], paths.width)
    return [(Strided(first[0], len(first), len(first)), 1, None), (paths, len(middle), valid),
            (Strided(last[0], len(last), len(last)), 1, None)]


class PagedCascade(_WriteThenAttend):
    """Decode steps (one new token per row) in plain torch, reading a shared prompt once per request.

    The engine's default decode attention where the Triton kernel does not run (the CPU). Rows
    whose first run is a prompt their siblings read too (the P paths or samples of a request)
    form a *group*: the prompt's K/V are gathered once per group and all its rows' queries attend
    to them in one batched product; every row's other runs (its own tokens; a summary's paths) are
    its private part. The two partial softmaxes are merged exactly by their log-sum-exp. The
    reference backend instead gathers the prompt once per row, P times per step. Rows form groups
    only when that saves enough key reads (``CASCADE_MIN_GROUP_KEYS`` per group,
    ``CASCADE_MIN_SAVED_KEYS`` in the step): short prompts are cheaper to read per row. A step
    with no group (one path, summaries only, short prompts) is one fused SDPA call over each row's
    keys (read in place when a single row's slots are consecutive).
    """

    def __init__(self, cache: torch.Tensor, slot_mapping: torch.Tensor, groups: tuple | None, private: tuple,
                 whole: bool = False):
        self.cache = cache
        self.slot_mapping = slot_mapping  # (B,)
        # (keys: a slice of the pool or (NG, S) slots, valid (NG, S) or None, rows (NG, Q), row_valid (NG, Q))
        self.groups = groups
        self.whole = whole  # one group of every row, in order (one request's paths)
        self.private = private  # (slots (B, W) or ``Strided``, valid (B, W) or None)
        # what every layer of the step shares, made once per step: key-padding biases (float32 for the
        # cascade's partials), group rows, and views of every layer's keys/values read in place
        slots = private[0]
        self.own, self.own_slots = None, None
        if isinstance(slots, Strided):  # (L, 2, B, W, KVH, hd), a view: no copy
            self.own = _stretches(cache, slots, slot_mapping.shape[0])
        else:
            self.own_slots = slots.reshape(-1)
        if groups is None:
            self.bias = _key_bias(private[1], cache.dtype)
            return
        g_keys, g_valid, g_rows, g_rvalid = groups
        self.bias, self.group_bias = _key_bias(private[1], torch.float32), _key_bias(g_valid, torch.float32)
        self.q_rows, self.rows = g_rows.clamp_min(0), g_rows[g_rvalid]  # each row is in at most one group
        # a prompt in consecutive slots: (L, 2, 1, KVH, S, hd), the layout the flash partial takes
        self.shared = cache[:, :, g_keys].transpose(2, 3)[:, :, None] if isinstance(g_keys, slice) else None

    @classmethod
    def for_chunks(cls, cache: torch.Tensor, chunks: list[Chunk], device: torch.device) -> PagedCascade | RunsInPlace:
        if len(chunks) == 1:  # a lone row (a summary): its reads in place where they lie so and are long
            parts = _in_place_parts(chunks[0].reads, cache.shape[2])
            if parts is not None:
                slot_mapping = torch.tensor(chunks[0].new_slots[:1], dtype=torch.long, device=device)
                return RunsInPlace(cache, slot_mapping, parts)
        plan = Plan.from_chunks(chunks, max_rows=len(chunks))  # groups of >= 2 rows; everything else single
        per_row: list[list[int]] = [[] for _ in chunks]
        saved = [run.length * (len(rows) - 1) for run, rows in plan.shared]  # key reads a group saves
        big = {i for i, n in enumerate(saved) if n >= CASCADE_MIN_GROUP_KEYS}
        if sum(saved[i] for i in big) < CASCADE_MIN_SAVED_KEYS:
            big = set()
        shared = [g for i, g in enumerate(plan.shared) if i in big]
        for i, (run, rows) in enumerate(plan.shared):  # short prompts: read per row (cheaper than a merge's extra ops)
            if i not in big:
                for r in rows:
                    per_row[r].extend(run.slot_list)
        groups = None
        if shared:
            runs = [run for run, _ in shared]
            rows, row_valid = _padded([list(r) for _, r in shared])
            if len(runs) == 1 and _consecutive(runs[0].slot_list):  # one prompt in consecutive pages: a view
                first = runs[0].slot_list[0]
                keys: slice | torch.Tensor = slice(first, first + runs[0].length)
                valid = None
            else:
                keys, valid = (t.to(device) for t in _padded([r.slot_list for r in runs]))
            groups = (keys, valid, rows.to(device), row_valid.to(device))
        for run, r in plan.single:
            per_row[r].extend(run.slot_list)
        strided = _strided(per_row, cache.shape[2])
        if strided is not None:  # read in place; rows shorter than the widest are padded by key masking
            valid = _shorter_masked([len(r) for r in per_row], strided.width)
            private: tuple = (strided, None if valid is None else valid.to(device))
        else:
            slots, valid = _padded(per_row)
            private = (slots.to(device), None if bool(valid.all()) else valid.to(device))
        slot_mapping = torch.tensor([c.new_slots[0] for c in chunks], dtype=torch.long, device=device)
        whole = len(shared) == 1 and list(shared[0][1]) == list(range(len(chunks)))
        return cls(cache, slot_mapping, groups, private, whole)

    def attend(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """q (B, H, D), the rows' new K/V already stored -> (B, H, D)."""
        B, H, D = q.shape
        KVH = self.cache.shape[3]
        G = H // KVH
        if self.own is not None:  # in place (``Strided``)
            keys, vals = self.own[layer]  # (B, W, KVH, D)
        else:  # both halves in one gather: (2, B, W, KVH, D)
            keys, vals = self.cache[layer].index_select(1, self.own_slots).view(2, B, -1, KVH, D)
        if self.groups is None:  # nothing shared: one fused attention call
            if _FLASH_CPU is not None and q.device.type == "cpu":  # a KV head's G query heads as G query rows
                out = _FLASH_CPU(q.view(B, KVH, G, D), keys.transpose(1, 2), vals.transpose(1, 2), attn_mask=self.bias,
                                 scale=D**-0.5)[0]
                return out.reshape(B, H, D)
            return sdpa(q[:, None], keys, vals, self.bias)[:, 0]
        f32 = torch.float32
        qf = q.view(B, KVH, G, D).to(f32)
        out, lse = _partial_attention(qf, keys.to(f32), vals.to(f32), self.private[1], self.bias)  # each row's own keys
        g_keys, g_valid, g_rows, g_rvalid = self.groups
        if self.shared is not None:  # read in place, already in the partial's layout
            keys, vals = self.shared[layer].to(f32)  # (1, KVH, S, D)
        else:  # (NG, S, KVH, D): gathered once per group, not once per row
            NG, S = g_keys.shape
            keys, vals = self.cache[layer].index_select(1, g_keys.reshape(-1)).view(2, NG, S, KVH, D).to(f32)
            keys, vals = keys.transpose(1, 2), vals.transpose(1, 2)
        NG, Q = g_rows.shape
        if self.whole:  # one group of every row, in order (one request's paths): no gather or scatter of rows
            qg = qf.transpose(0, 1).reshape(1, KVH, B * G, D)
        else:
            qg = qf[self.q_rows].transpose(1, 2).reshape(NG, KVH, Q * G, D)  # a group's rows x heads
        o2, l2 = _partial_attention(qg, keys, vals, g_valid, self.group_bias, transposed=True)
        o2 = o2.view(NG, KVH, Q, G, D).transpose(1, 2)  # (NG, Q, KVH, G, D)
        l2 = l2.view(NG, KVH, Q, G).transpose(1, 2)
        if self.whole:
            out = _merge(out, lse, o2[0], l2[0])
        else:
            rows = self.rows
            out = out.clone()
            out[rows] = _merge(out[rows], lse[rows], o2[g_rvalid], l2[g_rvalid])
        return out.to(q.dtype).reshape(B, H, D)


# SDPA's CPU flash kernel, which also returns the log-sum-exp a cascade merge needs (an internal op of
# torch: where a torch version lacks it, the same arithmetic runs as einsums)
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _partial_attention(q: torch.Tensor, keys: torch.Tensor, vals: torch.Tensor, valid: torch.Tensor | None,
                       bias: torch.Tensor | None = None, transposed: bool = False):  # noqa: ANN202
    """q (N, KVH, M, D) over keys/values (N or 1, S, KVH, D), ``valid`` (N, S) or None, float32.
    ``bias``: ``_key_bias(valid, float32)`` if the caller has it already; ``transposed``: keys/values
    come as (N or 1, KVH, S, D).

    Returns the softmax-weighted values (N, KVH, M, D) and the log-sum-exp of the scaled scores
    (N, KVH, M): one partial of a cascade, to be merged with ``_merge``.
    """
    D = q.shape[-1]
    if not transposed:
        keys, vals = keys.transpose(1, 2), vals.transpose(1, 2)
    if _FLASH_CPU is not None and q.device.type == "cpu":
        k, v = (x.expand(q.shape[0], -1, -1, -1) for x in (keys, vals))  # (N, KVH, S, D)
        if bias is None:
            bias = _key_bias(valid, q.dtype)
        return _FLASH_CPU(q, k, v, attn_mask=bias, scale=D**-0.5)[:2]
    s = torch.einsum("nkmd,nksd->nkms", q * D**-0.5, keys)
    if valid is not None:
        s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    return _partial(s, vals, "nkms,nksd->nkmd")


def _key_bias(valid: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(N, S) valid keys -> additive (N, 1, 1, S) bias: 0 where valid, -inf on padding (None: no padding)."""
    if valid is None:
        return None
    return torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill_(~valid, float("-inf"))[:, None, None, :]


def _consecutive(slots: list[int]) -> bool:
    """The slots are one stretch of the pool (each the previous + 1): readable as a slice, in place.

    Not just first and last: pages handed out again after others were freed can line those two up
    around a gap (pages 24, 30, 26, 27 of 4 slots: 96 ... 111, without 100-103, with 120-123).
    """
    if not slots or slots[-1] - slots[0] != len(slots) - 1:
        return False
    return slots == list(range(slots[0], slots[0] + len(slots)))


def _padded(lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged int lists -> (N, max_len) long (padding 0) and its validity mask."""
    n = max(1, max((len(x) for x in lists), default=0))
    lens = torch.tensor([len(x) for x in lists])
    flat = torch.tensor(list(chain.from_iterable(lists)), dtype=torch.long)
    valid = torch.arange(n)[None, :] < lens[:, None]
    out = torch.zeros(len(lists), n, dtype=torch.long)
    out[valid] = flat
    return out, valid


def _partial(scores: torch.Tensor, values: torch.Tensor, eq: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax-weighted values over the last axis of ``scores`` and its log-sum-exp (-inf: no key)."""
    m = scores.amax(-1, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    p = torch.exp(scores - m)
    total = p.sum(-1)
    out = torch.einsum(eq, p, values) / total.clamp_min(1e-30)[..., None]
    return out, torch.log(total) + m[..., 0]


def _merge(out: torch.Tensor, lse: torch.Tensor, o2: torch.Tensor, l2: torch.Tensor) -> torch.Tensor:
    """Two partials of the same rows (out, o2: (R, KVH, G, D); lse, l2: (R, KVH, G)) -> the attention over both."""
    m = torch.maximum(lse, l2)
    wa, wb = torch.exp(lse - m)[..., None], torch.exp(l2 - m)[..., None]
    return (out * wa + o2 * wb) / (wa + wb)
