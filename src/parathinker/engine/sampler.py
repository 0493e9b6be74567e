"""Token sampling: bans, greedy, temperature, top-k, top-p; per-request seeded draws.

Top-p/top-k look at the ``CANDIDATES`` most likely tokens first (a partial top-k instead of a
full vocabulary sort: the nucleus at usual temperatures is far smaller); a row whose nucleus
does not fit falls back to the full sort, so the result is exact either way. Draws use
``torch.multinomial`` with the request's own generator, so a seeded request draws the same
tokens whatever else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .params import SamplingParams

CANDIDATES = 1024


@dataclass
class Row:
    """One row of logits to sample: its request's params/generator and the token ids it may not emit."""

    params: SamplingParams
    generator: torch.Generator
    banned: torch.Tensor  # (k,) long


def sample(logits: torch.Tensor, rows: list[Row]) -> list[int]:
    """logits (N, V) float32 -> N token ids."""
    logits = logits.float().clone()
    ban_rows = torch.cat([torch.full((len(r.banned),), i, dtype=torch.long) for i, r in enumerate(rows)])
    ban_cols = torch.cat([r.banned for r in rows])
    if ban_cols.numel():
        logits[ban_rows.to(logits.device), ban_cols.to(logits.device)] = float("-inf")
    out = logits.argmax(-1).tolist()
    groups: dict[int, list[int]] = {}  # rows that share a generator (one request) draw together
    for i, r in enumerate(rows):
        if not r.params.greedy:
            groups.setdefault(id(r.generator), []).append(i)
    for which in groups.values():
        p = rows[which[0]].params
        lg = logits[which] / p.temperature
        probs = torch.softmax(lg, dim=-1)
        cand_p, cand_ids = _candidates(probs, p.top_k, p.top_p)
        gen = rows[which[0]].generator
        pick = torch.multinomial(cand_p.cpu(), 1, generator=gen).squeeze(1)  # (n,)
        drawn = cand_ids.cpu().gather(1, pick[:, None]).squeeze(1).tolist()
        for i, tok in zip(which, drawn):
            out[i] = tok
    return out


def _candidates(probs: torch.Tensor, top_k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised probabilities and ids of the tokens allowed by top-k and top-p, per row."""
    V = probs.shape[-1]
    if top_k == 0 and top_p >= 1.0:
        return probs, torch.arange(V, device=probs.device).expand_as(probs)
    k = min(top_k or V, V)
    if k > CANDIDATES and top_p < 1.0:
        # try the cheap partial top-k; keep it if every row's nucleus fits inside
        vals, ids = probs.topk(CANDIDATES, dim=-1)
        if bool((vals.sum(-1) >= top_p).all()):
            return _nucleus(vals, ids, top_p)
    vals, ids = probs.topk(k, dim=-1) if k < V else probs.sort(dim=-1, descending=True)
    return _nucleus(vals, ids, top_p)


def _nucleus(vals: torch.Tensor, ids: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the tail beyond mass top_p (sorted descending input; the most likely token always stays)."""
    if top_p < 1.0:
        mass_before = vals.cumsum(-1) - vals
        drop = mass_before >= top_p
        drop[:, 0] = False
        vals = vals.masked_fill(drop, 0.0)
    return vals, ids
