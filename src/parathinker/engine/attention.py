"""Attention over the paged KV pool.

Backends share one interface (STYLE: ``prepare`` builds metadata for a step, ``__call__``
runs one layer). ``PagedReference`` is the oracle: it writes the new k', v' into their slots,
gathers every key a row may read through its slot list, and runs SDPA with an explicit
additive mask. Faster backends (shared-prefix / cascade kernels, CUDA graphs) must match it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain

import torch

from ..model.attention import sdpa


@dataclass
class StepMetadata:
    """Everything one forward needs to know about where K/V live. B rows, T new tokens max, S keys max."""

    slot_mapping: torch.Tensor  # (B, T) long: where each new token's k', v' go (padding -> slot 0, the null page)
    kv_slots: torch.Tensor  # (B, S) long: the slots each row reads, its new tokens last (padding -> 0)
    bias: torch.Tensor  # (B, 1, T, S) float additive mask


def build_metadata(
    new_slots: list[list[int]],
    read_slots: list[Iterable[int]],
    visibility: list[torch.Tensor | None],
    device: torch.device,
    read_lens: list[int] | None = None,
) -> StepMetadata:
    """Rows read ``read_slots[b]`` (context, then their own new tokens, which end the list).

    A new token j of row b sees every context key and the new tokens up to j (causal), or the
    new tokens ``visibility[b][j]`` allows when given (the re-prefill of a packed sequence).
    Built from two flat tensors and index arithmetic: no per-row tensor, so hundreds of rows cost
    about as much as a few.
    """
    B = len(new_slots)
    n_new = torch.tensor([len(s) for s in new_slots])
    n_read = torch.tensor(read_lens if read_lens is not None else [len(s) for s in read_slots])  # type: ignore[arg-type]
    T, S = int(n_new.max()), int(n_read.max())
    slot_mapping = _pad_rows(torch.tensor(list(chain.from_iterable(new_slots)), dtype=torch.long), n_new, T)
    kv_slots = _pad_rows(torch.tensor(list(chain.from_iterable(read_slots)), dtype=torch.long), n_read, S)
    ctx = (n_read - n_new)[:, None]  # (B, 1)
    j = torch.arange(T)[None, :]
    limit = torch.where(j < n_new[:, None], ctx + j + 1, 1)  # padded queries see key 0 only (no NaN rows)
    visible = torch.arange(S)[None, None, :] < limit[:, :, None]  # (B, T, S)
    for b, vis in enumerate(visibility):
        if vis is not None:
            n, c = int(n_new[b]), int(ctx[b])
            visible[b, :n, c : c + n] = vis
    bias = torch.zeros(B, 1, T, S).masked_fill_(~visible[:, None], float("-inf"))
    return StepMetadata(slot_mapping.to(device), kv_slots.to(device), bias.to(device))


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
        flat = self.meta.slot_mapping.reshape(-1)
        kv[0].index_copy_(0, flat, k.reshape(-1, *k.shape[2:]).to(kv.dtype))
        kv[1].index_copy_(0, flat, v.reshape(-1, *v.shape[2:]).to(kv.dtype))
        keys = kv[0][self.meta.kv_slots]  # (B, S, KVH, hd)
        values = kv[1][self.meta.kv_slots]
        return sdpa(q, keys, values, self.meta.bias)


def triton_available() -> bool:
    from . import triton_decode

    return triton_decode.triton is not None


class TritonDecode:
    """Decode steps (one new token per row) through the Triton kernel over page-table work lists.

    Built from device tensors only (the static buffers of ``graph_runner.DecodeState``), so a
    forward through it can be captured in a CUDA graph.
    """

    def __init__(self, cache: torch.Tensor, slot_mapping: torch.Tensor, classes: list, row_entries: torch.Tensor,
                 page_size: int):
        self.cache = cache
        self.slot_mapping = slot_mapping.reshape(-1).long()  # (B,): padded rows -> slot 0
        self.classes = classes  # list[triton_decode.DecodeLists]
        self.row_entries = row_entries
        self.page_size = page_size

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        from .triton_decode import decode_attention

        kv = self.cache[layer]  # (2, slots, KVH, hd)
        kv[0].index_copy_(0, self.slot_mapping, k[:, 0].to(kv.dtype))
        kv[1].index_copy_(0, self.slot_mapping, v[:, 0].to(kv.dtype))
        out = decode_attention(q[:, 0], kv[0], kv[1], self.classes, self.row_entries, self.page_size)
        return out[:, None]  # (B, 1, H, hd)
