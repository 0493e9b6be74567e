"""The attention interface between the model and whoever owns K/V memory.

The model computes q, k', v' (thought embedding added, RoPE applied) and hands them to an
``Attention`` object, which decides where K/V live and which keys each query sees:

- ``DenseAttention``: no cache; one explicit additive mask over the batch (training, and the
  brute-force references in tests).
- the engine's paged backends (``parathinker.engine.attention``): write k', v' into the page
  pool, then attend over each sequence's page table.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F


class Attention(Protocol):
    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: (B, T, H, hd); k, v: (B, T, KVH, hd) -> (B, T, H, hd)."""
        ...


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Reference attention. q (B, T, H, hd), k/v (B, S, KVH, hd), bias (B, 1, T, S) additive -> (B, T, H, hd)."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, heads, len, hd)
    if bias is not None:
        bias = bias.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=k.shape[1] != q.shape[1])
    return out.transpose(1, 2)


class DenseAttention:
    """Attention over the tokens of this forward only, with an explicit (B, 1, T, T) additive mask."""

    def __init__(self, bias: torch.Tensor | None):
        self.bias = bias

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return sdpa(q, k, v, self.bias)
