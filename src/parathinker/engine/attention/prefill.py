"""Multi-token chunks (prompts, forced tokens, re-prefill segments) in SDPA's causal modes: no mask tensor."""

from __future__ import annotations

from itertools import accumulate

import torch

from ...model.attention import sdpa
from .base import write_kv


class PagedCausal:
    """One chunk of new tokens over its keys (context, then themselves), causally: no [T, S] mask.

    Writes k', v' into their slots, then SDPA in a causal mode: bottom-right aligned over the keys
    read from the pool through ``read_slots`` (1, S) (``torch.nn.attention.bias.causal_lower_right``),
    or plain causal over the k', v' just computed when the chunk reads nothing else (a prompt).
    Every multi-token chunk of the engine is of this form: a prompt, forced tokens after a context,
    and each segment of a re-prefill once its keys are cut to those its kind sees (``layout.sees``).
    """

    def __init__(self, cache: torch.Tensor, slot_mapping: torch.Tensor, read_slots: torch.Tensor | None):
        self.cache = cache
        self.slot_mapping = slot_mapping  # (1, T) long
        self.read_slots = read_slots  # (1, S) long, the new tokens last; None: only the new tokens

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        kv = self.cache[layer]
        write_kv(kv, self.slot_mapping, k, v)
        if self.read_slots is None:
            return sdpa(q, k.to(kv.dtype), v.to(kv.dtype), None, causal=True)
        return sdpa(q, kv[0][self.read_slots], kv[1][self.read_slots], None, causal=True)


class PackedPrompts:
    """Several multi-token chunks packed end to end in one row (one weight pass): each attends causally to
    its own keys only, as ``PagedCausal`` would one at a time.

    Writes every token's k', v' into its slot, then runs SDPA's causal mode per chunk: a prompt over the
    k', v' just computed (nothing read from the pool), a chunk after a context (a summary's forced opening,
    forced path tokens) bottom-right aligned over the keys it reads from the pool (``reads``).
    """

    def __init__(self, cache: torch.Tensor, slot_mapping: torch.Tensor, lens: list[int],
                 reads: list[torch.Tensor | None] | None = None):
        self.cache = cache
        self.slot_mapping = slot_mapping  # (1, sum(lens)) long
        ends = list(accumulate(lens))
        self.bounds = [(e - n, e) for e, n in zip(ends, lens)]  # [start, end) of each chunk
        self.reads = reads or [None] * len(lens)  # per chunk: (1, S) slots read, its new tokens last; None: a prompt

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        kv = self.cache[layer]
        write_kv(kv, self.slot_mapping, k, v)
        k, v = k.to(kv.dtype), v.to(kv.dtype)
        return torch.cat([sdpa(q[:, a:b], k[:, a:b], v[:, a:b], None, causal=True) if read is None else
                          sdpa(q[:, a:b], kv[0][read], kv[1][read], None, causal=True)
                          for (a, b), read in zip(self.bounds, self.reads)], dim=1)
