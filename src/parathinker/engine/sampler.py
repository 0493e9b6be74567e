"""Token sampling: bans, greedy, temperature, top-k, top-p; per-request seeded draws on the logits' device.

Draws are exponential races: token ``argmax_i p_i / E_i`` with ``E_i ~ Exp(1)`` is distributed as
``p`` (``p`` may be unnormalised; zeros never win). The noise comes from the request's own
generator, on the logits' device, so a seeded request draws the same tokens whatever else is in
the batch, and nothing of size V crosses to the host: ``sample_tensor`` returns the chosen ids on
the device (the engine copies them with their log-probs to the host once per step).

Top-p/top-k look at the ``CANDIDATES`` most likely tokens first (a partial top-k instead of a
full vocabulary sort: the nucleus at usual temperatures is far smaller); a request whose nucleus
does not fit falls back to the full sort, so the result is exact either way. Rows without top-k/
top-p (the default) are drawn together in one batched race, whatever their temperatures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .params import SamplingParams

CANDIDATES = 1024
_TINY = 1e-30  # exponential draws of exactly 0 would give an infinite ratio


@dataclass
class Row:
    """One row of logits to sample: its request's params/generator and the token ids it may not emit."""

    params: SamplingParams
    generator: torch.Generator
    banned: torch.Tensor  # (k,) long


def sample(logits: torch.Tensor, rows: list[Row]) -> list[int]:
    """logits (N, V) -> N token ids (host list)."""
    return sample_tensor(logits, rows).tolist()


def sample_tensor(logits: torch.Tensor, rows: list[Row]) -> torch.Tensor:
    """logits (N, V) -> (N,) long token ids on the logits' device; no host sync unless top-p needs one."""
    dev = logits.device
    logits = logits.float().clone()
    bans = [(i, r.banned) for i, r in enumerate(rows) if len(r.banned)]
    if bans:
        ban_rows = torch.cat([torch.full((len(b),), i, dtype=torch.long) for i, b in bans])
        ban_cols = torch.cat([b for _, b in bans])
        logits[ban_rows.to(dev, non_blocking=True), ban_cols.to(dev, non_blocking=True)] = float("-inf")
    out = logits.argmax(-1)
    # consecutive rows of one generator (one request) draw together; plain rows (no top-k/top-p) of all
    # requests share one batched race, each request filling its own slice of the noise
    groups: list[tuple[int, int]] = []  # [start, end) of rows with one generator
    for i, r in enumerate(rows):
        if r.params.greedy:
            continue
        if groups and groups[-1][1] == i and rows[groups[-1][0]].generator is r.generator:
            groups[-1] = (groups[-1][0], i + 1)
        else:
            groups.append((i, i + 1))
    plain = [(a, b) for a, b in groups if _is_plain(rows[a].params)]
    if plain:
        idx = [i for a, b in plain for i in range(a, b)]
        index = torch.tensor(idx, device=dev) if len(idx) < len(rows) else None
        lg = logits if index is None else logits.index_select(0, index)
        temps = torch.tensor([rows[i].params.temperature for i in idx], dtype=torch.float32)
        probs = torch.softmax(lg / temps.to(dev, non_blocking=True)[:, None], dim=-1)
        noise = torch.empty_like(probs)
        k = 0
        for a, b in plain:
            noise[k : k + b - a].exponential_(generator=rows[a].generator)
            k += b - a
        pick = (probs / noise.clamp_min_(_TINY)).argmax(-1)
        if index is None:
            out = pick
        else:
            out.index_copy_(0, index, pick)
    for a, b in groups:
        p = rows[a].params
        if _is_plain(p):
            continue
        probs = torch.softmax(logits[a:b] / p.temperature, dim=-1)
        cand_p, cand_ids = _candidates(probs, p.top_k, p.top_p)
        noise = torch.empty_like(cand_p).exponential_(generator=rows[a].generator).clamp_min_(_TINY)
        pick = (cand_p / noise).argmax(-1, keepdim=True)
        out[a:b] = cand_ids.gather(1, pick)[:, 0]
    return out


def _is_plain(p: SamplingParams) -> bool:
    return p.top_k == 0 and p.top_p >= 1.0


def _candidates(probs: torch.Tensor, top_k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised probabilities and ids of the tokens allowed by top-k and top-p, per row."""
    V = probs.shape[-1]
    if top_k == 0 and top_p >= 1.0:
        return probs, torch.arange(V, device=probs.device).expand_as(probs)
    k = min(top_k or V, V)
    if k > CANDIDATES and top_p < 1.0:
        # try the cheap partial top-k; keep it if every row's nucleus fits inside (one host sync)
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
