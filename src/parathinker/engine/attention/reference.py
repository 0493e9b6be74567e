"""The oracle: write k', v' into their slots, gather every key a row may read, SDPA with an explicit mask.

Every faster backend (prefill's causal modes, the cascade, the Triton kernel, CUDA graphs) is
tested against it.
"""

from __future__ import annotations

from itertools import chain

import torch

from ...layout import visibility_rows
from ...model.attention import sdpa
from ..plan import StepMetadata
from .base import write_kv


def build_metadata(
    new_slots: list[list[int]],
    read_slots: list[list[int]],
    kinds: list[torch.Tensor | None],
    device: torch.device,
) -> StepMetadata:
    """Rows read ``read_slots[b]`` (context, then their own new tokens, which end the list).

    A new token j of row b sees every context key and the new tokens up to j (causal), or, when
    ``kinds[b]`` is given (the re-prefill of a packed sequence: per-token kinds of the row's last
    ``m`` keys, its new tokens last), what ``layout.visibility_rows`` allows among those ``m`` keys.
    The index lists are built on the host from flat tensors (no per-row tensor: hundreds of rows
    cost about as much as a few); the (B, 1, T, S) mask is built on ``device``.
    """
    B = len(new_slots)
    n_new = torch.tensor([len(s) for s in new_slots])
    n_read = torch.tensor([len(s) for s in read_slots])
    T, S = int(n_new.max()), int(n_read.max())
    slot_mapping = _pad_rows(torch.tensor(list(chain.from_iterable(new_slots)), dtype=torch.long), n_new, T)
    kv_slots = _pad_rows(torch.tensor(list(chain.from_iterable(read_slots)), dtype=torch.long), n_read, S)
    ctx = (n_read - n_new)[:, None]  # (B, 1)
    j = torch.arange(T)[None, :]
    limit = torch.where(j < n_new[:, None], ctx + j + 1, 1)  # padded queries see key 0 only (no NaN rows)
    visible = torch.arange(S, device=device)[None, None, :] < limit.to(device)[:, :, None]  # (B, T, S)
    for b, kd in enumerate(kinds):
        if kd is not None:
            n, m, end = int(n_new[b]), len(kd), int(n_read[b])
            visible[b, :n, end - m : end] = visibility_rows(kd.to(device), m - n, m)
    bias = torch.zeros(B, 1, T, S, device=device).masked_fill_(~visible[:, None], float("-inf"))
    return StepMetadata(slot_mapping.to(device), kv_slots.to(device), bias)


def _pad_rows(flat: torch.Tensor, lens: torch.Tensor, width: int) -> torch.Tensor:
    """Rows of lengths ``lens`` laid end to end in ``flat`` -> (B, width), zero padded."""
    out = torch.zeros(len(lens), width, dtype=flat.dtype)
    rows = torch.repeat_interleave(torch.arange(len(lens)), lens)
    starts = torch.cumsum(lens, 0) - lens
    cols = torch.arange(flat.numel()) - starts[rows]
    out[rows, cols] = flat
    return out


class PagedReference:
    """Write-then-gather attention over the pool ``cache`` ((layers, 2, slots, KVH, hd))."""

    def __init__(self, cache: torch.Tensor, meta: StepMetadata):
        self.cache = cache
        self.meta = meta

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        kv = self.cache[layer]  # (2, slots, KVH, hd)
        write_kv(kv, self.meta.slot_mapping, k, v)
        keys = kv[0][self.meta.kv_slots]  # (B, S, KVH, hd)
        values = kv[1][self.meta.kv_slots]
        return sdpa(q, keys, values, self.meta.bias)
