"""The torch decode backend (the CPU default): a request's shared prompt read once for all its rows.

``PagedCascade``: rows grouped by the prompt they share (the grouping rule of ``plan.Plan``), each
row's private keys apart (read in place through one ``Strided`` view when they lie in side-by-side
blocks), partials merged by log-sum-exp. ``RunsInPlace``: a lone row (a summary) over long runs that
lie in place. Both follow ``base.DecodeAttention``: the fused step stores K/V and calls ``attend``.
"""

from __future__ import annotations

import torch

from ...model.attention import sdpa
from ..block_manager import Run
from ..plan import Chunk, Plan
from .base import write_kv
from .private import (
    Private,
    Strided,
    consecutive,
    key_bias,
    padded,
    private_parts,
    shorter_masked,
    stretches,
    strided,
)

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
        self.parts = [(stretches(cache, p, n).transpose(3, 4), key_bias(valid, torch.float32)) for p, n, valid in parts]

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
    paths = strided(middle, num_slots)
    if paths is None or not consecutive(first) or not consecutive(last):
        return None
    valid = shorter_masked([len(m) for m in middle], paths.width)
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

    def __init__(self, cache: torch.Tensor, slot_mapping: torch.Tensor, groups: tuple | None, parts: list[Private],
                 whole: bool = False):
        self.cache = cache
        self.slot_mapping = slot_mapping  # (B,)
        # (keys: a slice of the pool or (NG, S) slots, valid (NG, S) or None, rows (NG, Q), row_valid (NG, Q))
        self.groups = groups
        self.whole = whole  # one group of every row, in order (one request's paths)
        # the rows' private keys in buckets of similar length (``private.private_parts``; one bucket: every row)
        self.parts = parts
        # what every layer of the step shares, made once per step: key-padding biases (float32 for the
        # cascade's partials), group rows, and views of every layer's keys/values read in place
        self.biases = [key_bias(p.valid, cache.dtype if groups is None else torch.float32) for p in parts]
        if groups is None:
            return
        g_keys, g_valid, g_rows, g_rvalid = groups
        self.group_bias = key_bias(g_valid, torch.float32)
        self.q_rows, self.rows = g_rows.clamp_min(0), g_rows[g_rvalid]  # each row is in at most one group
        # a prompt in consecutive slots: (L, 2, 1, KVH, S, hd), the layout the flash partial takes
        self.shared = cache[:, :, g_keys].transpose(2, 3)[:, :, None] if isinstance(g_keys, slice) else None

    @property
    def in_place(self) -> bool:
        """Every row's private keys are read in place (no gather)."""
        return all(p.view is not None for p in self.parts)

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
            rows, row_valid = padded([list(r) for _, r in shared])
            if len(runs) == 1 and consecutive(runs[0].slot_list):  # one prompt in consecutive pages: a view
                first = runs[0].slot_list[0]
                keys: slice | torch.Tensor = slice(first, first + runs[0].length)
                valid = None
            else:
                keys, valid = (t.to(device) for t in padded([r.slot_list for r in runs]))
            groups = (keys, valid, rows.to(device), row_valid.to(device))
        for run, r in plan.single:
            per_row[r].extend(run.slot_list)
        parts = private_parts(per_row, cache.shape[2], device, cache)
        slot_mapping = torch.tensor([c.new_slots[0] for c in chunks], dtype=torch.long, device=device)
        whole = len(shared) == 1 and list(shared[0][1]) == list(range(len(chunks)))
        return cls(cache, slot_mapping, groups, parts, whole)

    def attend(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """q (B, H, D), the rows' new K/V already stored -> (B, H, D)."""
        B, H, D = q.shape
        KVH = self.cache.shape[3]
        G = H // KVH
        qv = q.view(B, KVH, G, D)  # a KV head's G query heads as G query rows
        one = len(self.parts) == 1
        if self.groups is None:  # nothing shared: one fused attention call per bucket
            if one:
                return self._final(self.parts[0], self.biases[0], layer, qv).reshape(B, H, D)
            out = torch.empty_like(qv)
            for part, bias in zip(self.parts, self.biases):
                out.index_copy_(0, part.rows, self._final(part, bias, layer, qv.index_select(0, part.rows)))
            return out.reshape(B, H, D)
        f32 = torch.float32
        qf = qv.to(f32)
        if one:  # each row's private keys
            out, lse = self._partial(self.parts[0], self.biases[0], layer, qf)
        else:
            out, lse = qf.new_empty(B, KVH, G, D), qf.new_empty(B, KVH, G)
            for part, bias in zip(self.parts, self.biases):
                o, m = self._partial(part, bias, layer, qf.index_select(0, part.rows))
                out.index_copy_(0, part.rows, o)
                lse.index_copy_(0, part.rows, m)
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


    def _final(self, part: Private, bias: torch.Tensor | None, layer: int, q: torch.Tensor) -> torch.Tensor:
        """The attention of a bucket's rows over their private keys alone: q (R, KVH, G, D) -> (R, KVH, G, D)."""
        keys, vals = part.read(self.cache, layer)  # (R, W, KVH, D)
        R, KVH, G, D = q.shape
        if _FLASH_CPU is not None and q.device.type == "cpu":
            return _FLASH_CPU(q, keys.transpose(1, 2), vals.transpose(1, 2), attn_mask=bias, scale=D**-0.5)[0]
        return sdpa(q.reshape(R, 1, KVH * G, D), keys, vals, bias)[:, 0].view(R, KVH, G, D)

    def _partial(self, part: Private, bias: torch.Tensor | None, layer: int, q: torch.Tensor):  # noqa: ANN202
        """A bucket's partial over its private keys, float32 (to be merged with a group's)."""
        keys, vals = part.read(self.cache, layer)
        return _partial_attention(q, keys.float(), vals.float(), part.valid, bias)


# SDPA's CPU flash kernel, which also returns the log-sum-exp a cascade merge needs (an internal op of
# torch: where a torch version lacks it, the same arithmetic runs as einsums)
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _partial_attention(q: torch.Tensor, keys: torch.Tensor, vals: torch.Tensor, valid: torch.Tensor | None,
                       bias: torch.Tensor | None = None, transposed: bool = False):  # noqa: ANN202
    """q (N, KVH, M, D) over keys/values (N or 1, S, KVH, D), ``valid`` (N, S) or None, float32.
    ``bias``: ``key_bias(valid, float32)`` if the caller has it already; ``transposed``: keys/values
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
            bias = key_bias(valid, q.dtype)
        return _FLASH_CPU(q, k, v, attn_mask=bias, scale=D**-0.5)[:2]
    s = torch.einsum("nkmd,nksd->nkms", q * D**-0.5, keys)
    if valid is not None:
        s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    return _partial(s, vals, "nkms,nksd->nkmd")


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
