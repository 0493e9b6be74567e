"""Token sampling: bans, greedy, temperature, top-k, top-p; per-request seeded noise.

Sampling uses the exponential race (argmax p / E, E ~ Exp(1)), which equals sampling from p;
the noise of a request comes only from its own generator, so a seeded request draws the same
tokens whatever else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .params import SamplingParams


@dataclass
class Row:
    """One row of logits to sample: its request's params/generator and the token ids it may not emit."""

    params: SamplingParams
    generator: torch.Generator
    banned: torch.Tensor  # (k,) long


def sample(logits: torch.Tensor, rows: list[Row]) -> list[int]:
    """logits (N, V) float32 -> N token ids."""
    logits = logits.float().clone()
    N, V = logits.shape
    ban_rows = torch.cat([torch.full((len(r.banned),), i, dtype=torch.long) for i, r in enumerate(rows)])
    ban_cols = torch.cat([r.banned for r in rows])
    if ban_cols.numel():
        logits[ban_rows.to(logits.device), ban_cols.to(logits.device)] = float("-inf")
    out = logits.argmax(-1)
    stochastic = [i for i, r in enumerate(rows) if not r.params.greedy]
    if stochastic:
        idx = torch.tensor(stochastic, device=logits.device)
        lg = logits[idx]
        temp = torch.tensor([rows[i].params.temperature for i in stochastic], device=lg.device)[:, None]
        probs = _filter(torch.softmax(lg / temp, dim=-1), rows, stochastic)
        noise = torch.empty_like(probs)
        for j, i in enumerate(stochastic):
            noise[j].exponential_(generator=rows[i].generator)
        out[idx] = (probs / noise).argmax(-1)
    return out.tolist()


def _filter(probs: torch.Tensor, rows: list[Row], which: list[int]) -> torch.Tensor:
    """Zero out tokens outside top-k and outside the top-p nucleus (the most likely token always stays)."""
    top_k = [rows[i].params.top_k for i in which]
    top_p = [rows[i].params.top_p for i in which]
    if all(k == 0 for k in top_k) and all(p >= 1.0 for p in top_p):
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    rank = torch.arange(probs.shape[-1], device=probs.device)[None, :]
    k = torch.tensor([k if k > 0 else probs.shape[-1] for k in top_k], device=probs.device)[:, None]
    p = torch.tensor(top_p, device=probs.device)[:, None]
    mass_before = sorted_p.cumsum(-1) - sorted_p
    drop = (rank >= k) | (mass_before >= p)
    drop[:, 0] = False
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_p)
