"""What every attention backend shares: the K/V store, and the interface of decode attention."""

from __future__ import annotations

from typing import Protocol

import torch


def write_kv(kv: torch.Tensor, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Store the new tokens' k', v' ((..., KVH, hd), one per entry of ``slots``) in a layer's pool ``kv``."""
    kv[0].index_copy_(0, slots.reshape(-1), k.reshape(-1, *k.shape[-2:]).to(kv.dtype))
    kv[1].index_copy_(0, slots.reshape(-1), v.reshape(-1, *v.shape[-2:]).to(kv.dtype))



class DecodeAttention(Protocol):
    """Decode attention (one new token per row) whose K/V are stored before it runs (the fused step)."""

    cache: torch.Tensor  # (layers, 2, slots, KVH, hd)
    slot_mapping: torch.Tensor  # (B,) where each row's new k', v' go

    def attend(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """q (B, H, hd), the rows' K/V already stored -> (B, H, hd)."""
        ...
