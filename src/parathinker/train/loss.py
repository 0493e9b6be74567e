"""The SFT loss: summed token cross entropy over label tokens / the optimizer step's label tokens.

Labels are already aligned with the inputs (``layout.pack``: ``labels[k]`` is the target of the
logits at ``k``), so nothing is shifted. ``num_items_in_batch`` is Trainer's count of label
tokens in the whole accumulated step over all processes, which makes 1 and N processes, and any
accumulation, give the same loss and gradients for the same global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layout import IGNORE_INDEX


def _denominator(labels: torch.Tensor, num_items_in_batch) -> torch.Tensor | int:  # noqa: ANN001
    if num_items_in_batch is not None:
        return num_items_in_batch
    return labels.ne(IGNORE_INDEX).sum().clamp(min=1)


def token_ce(logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:  # noqa: ANN001
    """Sum of CE over label tokens / ``num_items_in_batch`` (default: this batch's label tokens).

    logits (B, T, V), labels (B, T) aligned with the inputs (IGNORE_INDEX where no loss).
    """
    loss = F.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten().to(logits.device), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss / _denominator(labels, num_items_in_batch)


def _chunk_ce(lm_head: nn.Module, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(lm_head(h).float(), y, reduction="sum")


def chunked_token_ce(
    lm_head: nn.Module,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch=None,  # noqa: ANN001
    chunk_size: int = 2048,
) -> torch.Tensor:
    """``token_ce(lm_head(hidden), labels, n)`` without the [B, T, V] logits.

    Only positions with a label go through the LM head, ``chunk_size`` at a time; each chunk's
    logits + CE run under ``torch.utils.checkpoint``, so the forward keeps no logits and the
    backward recomputes one chunk at a time: peak extra memory ~ ``chunk_size x V`` floats (a few
    of them), whatever T is. ``lm_head`` is called as a module (DeepSpeed ZeRO-3 gathers its
    weight in the module's hooks).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    labels = labels.to(hidden.device)
    keep = labels.ne(IGNORE_INDEX)
    h = hidden[keep]  # (N, D), in sequence order
    y = labels[keep]
    if h.shape[0] == 0:  # no label in this micro-batch: a zero that still has a graph
        return (hidden.sum() * 0.0).float()
    total = None
    for s in range(0, h.shape[0], chunk_size):
        part = checkpoint(_chunk_ce, lm_head, h[s : s + chunk_size], y[s : s + chunk_size], use_reentrant=False)
        total = part if total is None else total + part
    return total / _denominator(labels, num_items_in_batch)
