"""The private keys of a CPU decode step's rows (``PagedCascade``): in place where they lie so, else gathered,
in buckets of rows of similar length.

A row's private keys are what it reads besides a prompt shared as a group: a path's own tokens, a
summary's prompt + paths + own tokens, a short prompt read per row. Many requests in one step mix rows
of very different lengths (paths a few tokens in, summaries over every path); padding them all to the
longest would gather and attend over mostly masked keys. ``private_parts`` sorts the rows into buckets
whose padding costs less than a bucket's fixed cost (``BUCKET_MIN_SAVED_KEYS``), each read in place
(one ``Strided`` view) when its rows' slots allow, else gathered once per layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import torch

# A step's rows split into another bucket when that saves at least this many padded key reads (rows x keys):
# a bucket costs one more gather, attention call and scatter per layer (~20-40 us on the CPU), a padded key
# read ~0.05 us. benchmarks/serve_load.py's requests on the engine alone at C = 32 (2-core CPU, medians of 4):
# a limit of 128 / 512 / 1024 / 4096 / no split: 33.1 / 32.9 / 35.5 / 34.9 / 25.5 requests/s.
BUCKET_MIN_SAVED_KEYS = 1024


@dataclass(frozen=True)
class Strided:
    """Rows' private keys read in place: row b's are the ``width`` slots from ``start + b * stride``
    (one row: its consecutive slots; a request's paths: side-by-side page blocks, ``PagePool.take_block``)."""

    start: int
    stride: int
    width: int


@dataclass
class Private:
    """The private keys of some rows of a step (a bucket), read in place or gathered."""

    rows: torch.Tensor | None  # (R,) their rows in the step, ascending; None: every row, in order
    view: torch.Tensor | None  # in place: every layer's (L, 2, R, W, KVH, hd), a view of the pool (no copy)
    slots: torch.Tensor | None  # gathered: (R * W,) slots (padding reads slot 0)
    valid: torch.Tensor | None  # (R, W) valid keys; None: every key is valid
    num_rows: int

    def read(self, cache: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's keys and values of the bucket's rows, each (R, W, KVH, hd)."""
        if self.view is not None:
            keys, vals = self.view[layer]
            return keys, vals
        KVH, D = cache.shape[3:]
        keys, vals = cache[layer].index_select(1, self.slots).view(2, self.num_rows, -1, KVH, D)  # both halves at once
        return keys, vals


def private_parts(per_row: list[list[int]], num_slots: int, device: torch.device | str,
                  cache: torch.Tensor) -> list[Private]:
    """The rows' private slot lists as buckets (``split_by_length``), each read in place or gathered."""
    buckets = split_by_length([len(r) for r in per_row])
    parts = []
    for rows in buckets:
        lists = [per_row[b] for b in rows] if len(buckets) > 1 else per_row
        at = None if len(buckets) == 1 else torch.tensor(rows, device=device)
        s = strided(lists, num_slots)
        if s is not None:  # read in place; rows shorter than the widest are padded by key masking
            valid = shorter_masked([len(r) for r in lists], s.width)
            parts.append(Private(at, stretches(cache, s, len(lists)), None,
                                 None if valid is None else valid.to(device), len(lists)))
        else:
            slots, valid = padded(lists)
            parts.append(Private(at, None, slots.reshape(-1).to(device),
                                 None if bool(valid.all()) else valid.to(device), len(lists)))
    return parts


def split_by_length(lengths: list[int], min_saved: int | None = None) -> list[list[int]]:
    """Rows (indices into ``lengths``) in buckets of similar length, each bucket's rows ascending.

    Longest first: a row starts a new bucket when giving it and every shorter row their own width instead
    of the current bucket's saves at least ``min_saved`` (default ``BUCKET_MIN_SAVED_KEYS``) key reads.
    One bucket (every row, in order) when no split pays.
    """
    limit = BUCKET_MIN_SAVED_KEYS if min_saved is None else min_saved
    order = sorted(range(len(lengths)), key=lambda b: -lengths[b])
    buckets: list[list[int]] = []
    width = -1
    for i, b in enumerate(order):
        n = lengths[b]
        if not buckets or (width - n) * (len(order) - i) >= limit:
            buckets.append([])
            width = n
        buckets[-1].append(b)
    if len(buckets) <= 1:
        return [list(range(len(lengths)))]
    return [sorted(rows) for rows in buckets]


def strided(per_row: list[list[int]], num_slots: int) -> Strided | None:
    """The rows' slots as one ``Strided`` view of a pool of ``num_slots``, if each row's are consecutive and
    the rows' starts are evenly spaced (a shorter row's view runs past its slots, masked, inside the pool)."""
    if not all(consecutive(r) for r in per_row):
        return None
    starts, width = [r[0] for r in per_row], max(len(r) for r in per_row)
    stride = starts[1] - starts[0] if len(starts) > 1 else width
    if stride < width or starts[-1] + width > num_slots or any(b - a != stride for a, b in zip(starts, starts[1:])):
        return None
    return Strided(starts[0], stride, width)


def stretches(cache: torch.Tensor, s: Strided, n: int) -> torch.Tensor:
    """Every layer's ``n`` stretches of ``s`` as a view of the pool: (L, 2, n, width, KVH, hd), no copy."""
    st = cache.stride()
    return cache.as_strided((*cache.shape[:2], n, s.width, *cache.shape[3:]), (st[0], st[1], s.stride * st[2], *st[2:]),
                            cache.storage_offset() + s.start * st[2])


def shorter_masked(lens: list[int], width: int) -> torch.Tensor | None:
    """(n, width) valid keys of stretches holding ``lens`` keys each; None when every one is full."""
    return None if min(lens) == width else torch.arange(width)[None, :] < torch.tensor(lens)[:, None]


def key_bias(valid: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(N, S) valid keys -> additive (N, 1, 1, S) bias: 0 where valid, -inf on padding (None: no padding)."""
    if valid is None:
        return None
    return torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill_(~valid, float("-inf"))[:, None, None, :]


def consecutive(slots: list[int]) -> bool:
    """The slots are one stretch of the pool (each the previous + 1): readable as a slice, in place.

    Not just first and last: pages handed out again after others were freed can line those two up
    around a gap (pages 24, 30, 26, 27 of 4 slots: 96 ... 111, without 100-103, with 120-123).
    """
    if not slots or slots[-1] - slots[0] != len(slots) - 1:
        return False
    return slots == list(range(slots[0], slots[0] + len(slots)))


def padded(lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged int lists -> (N, max_len) long (padding 0) and its validity mask."""
    n = max(1, max((len(x) for x in lists), default=0))
    lens = torch.tensor([len(x) for x in lists])
    flat = torch.tensor(list(chain.from_iterable(lists)), dtype=torch.long)
    valid = torch.arange(n)[None, :] < lens[:, None]
    out = torch.zeros(len(lists), n, dtype=torch.long)
    out[valid] = flat
    return out, valid
