"""The attention interface between the model and whoever owns K/V memory.

The model computes q, k', v' (thought embedding added, RoPE applied) and hands them to an
``Attention`` object, which decides where K/V live and which keys each query sees:

- ``DenseAttention``: no cache; one explicit additive mask over the batch (training, and the
  brute-force references in tests).
- ``FlexAttention``: no cache; ``torch.nn.attention.flex_attention`` with a ``BlockMask`` (long
  packed training sequences on GPU: no [B, 1, T, T] mask, fully hidden blocks are skipped).
- the engine's paged backends (``parathinker.engine.attention``): write k', v' into the page
  pool, then attend over each sequence's page table.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import torch
import torch.nn.functional as F


class Attention(Protocol):
    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: (B, T, H, hd); k, v: (B, T, KVH, hd) -> (B, T, H, hd)."""
        ...


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
         causal: bool = False) -> torch.Tensor:
    """Reference attention. q (B, T, H, hd), k/v (B, S, KVH, hd), bias (B, 1, T, S) additive -> (B, T, H, hd).

    ``causal`` (no bias): query i sees keys up to S - T + i (bottom-right aligned, so T < S means
    a context before the queries); SDPA's causal modes, no mask tensor (flash kernels where available).
    """
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, heads, len, hd)
    T, S = q.shape[2], k.shape[2]
    is_causal = causal and T == S
    gqa = k.shape[1] != q.shape[1]
    if causal and T != S and q.device.type == "cpu":
        # what CausalBias does on the CPU anyway (materialise the mask), without importing it:
        # torch.nn.attention.bias imports torch._dynamo, ~1.5 s of every CLI start-up
        bias = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    elif causal and T != S:
        from torch.nn.attention.bias import causal_lower_right

        bias = causal_lower_right(T, S)
        if gqa:  # CausalBias hands GPU kernels k/v as given: same head count there
            k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
            gqa = False
    elif bias is not None:
        bias = bias.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=is_causal, enable_gqa=gqa)
    return out.transpose(1, 2)


class DenseAttention:
    """Attention over the tokens of this forward only, with an explicit (B, 1, T, T) additive mask."""

    def __init__(self, bias: torch.Tensor | None):
        self.bias = bias

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return sdpa(q, k, v, self.bias)


@functools.cache
def _compiled_flex():  # noqa: ANN202 - the compiled flex_attention, built once per process
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


class FlexAttention:
    """Attention over the tokens of this forward only, masked by a FlexAttention ``BlockMask``.

    ``block_mask`` has shape (B or 1, 1, T, T) in tokens (see e.g.
    ``parathinker.train.collate.batch_block_mask``, built from per-token kinds without a dense
    T x T tensor). ``compile``: None (default) compiles ``flex_attention`` on CUDA, where only the
    compiled kernel is memory-efficient, and runs it eagerly elsewhere (eager materialises the
    scores, like the dense path: fine for CPU tests); True/False force either. Under autocast
    q, k, v are cast to the autocast dtype first, as SDPA does; GQA via ``enable_gqa``.
    """

    def __init__(self, block_mask: Any, compile: bool | None = None):  # noqa: A002 - mirrors torch.compile
        self.block_mask = block_mask
        self.compile = compile

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        from torch.nn.attention.flex_attention import flex_attention

        dev = q.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else q.dtype
        q, k, v = (x.transpose(1, 2).to(dtype) for x in (q, k, v))  # (B, heads, T, hd)
        use_compiled = self.compile if self.compile is not None else q.is_cuda
        fn = _compiled_flex() if use_compiled else flex_attention
        out = fn(q, k, v, block_mask=self.block_mask, enable_gqa=k.shape[1] != q.shape[1])
        return out.transpose(1, 2)
