"""Token sampling: bans, greedy, temperature, top-k, top-p; per-request seeded draws on the logits' device.

Draws are exponential races: token ``argmax_i p_i / E_i`` with ``E_i ~ Exp(1)`` is distributed as
``p`` (``p`` may be unnormalised; zeros never win). The noise comes from the request's own
generator, on the logits' device, so a seeded request draws the same tokens whatever else is in
the batch, and nothing of size V crosses to the host.

All rows are drawn together, whatever their parameters: rows without top-k/top-p race over the
whole vocabulary; rows with them race over their ``CANDIDATES`` most likely tokens (one batched
partial top-k instead of a full vocabulary sort), each row's own top-k rank and nucleus mass
masking its candidates. The nucleus at usual temperatures is far smaller than the window; a row
whose nucleus might not fit (candidates' mass below its top-p, no top-k cutting first) is flagged
on the device, not checked with a host sync: the engine reads the flags in the step's one host copy
and redraws just those rows exactly (``resample_exact``, a full sort), so results are exact either way.
On the CPU, where a check costs nothing, a first window of ``FIRST_CANDIDATES`` is tried (a top-1024
over SmolLM2's vocabulary costs 4x a top-64): rows whose nucleus fits it race over it with the same
noise (so the same tokens come out); only the others take the full window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..params import SamplingParams

CANDIDATES = 1024
FIRST_CANDIDATES = 64  # CPU: the first window tried
_TINY = 1e-30  # exponential draws of exactly 0 would give an infinite ratio


@dataclass
class Row:
    """One row of logits to sample: its request's params/generator and the token ids it may not emit."""

    params: SamplingParams
    generator: torch.Generator
    banned: torch.Tensor  # (k,) long


def sample(logits: torch.Tensor, rows: list[Row]) -> list[int]:
    """logits (N, V) -> N token ids (host list; resolves flagged rows at once)."""
    tokens, unsure = sample_tensor(logits, rows)
    if unsure is not None and bool(unsure.any()):
        redo = unsure.nonzero()[:, 0]
        tokens = tokens.clone()
        tokens[redo] = resample_exact(logits[redo], [rows[i] for i in redo.tolist()])
    return tokens.tolist()


def sample_tensor(logits: torch.Tensor, rows: list[Row]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits (N, V) -> (N,) long ids on the logits' device, and the rows to redraw with ``resample_exact``.

    The second value is None when no row can need it, else an (N,) bool device tensor. No host sync.
    """
    dev = logits.device
    N, V = logits.shape
    logits = _banned(logits, rows)
    greedy = any(r.params.greedy for r in rows)
    out = logits.argmax(-1) if greedy else torch.empty(N, dtype=torch.long, device=dev)  # every row drawn below
    unsure = None
    groups = _generator_groups(rows)  # [start, end) of consecutive non-greedy rows sharing a generator
    plain = [(a, b) for a, b in groups if _is_plain(rows[a].params)]
    filt = [(a, b) for a, b in groups if not _is_plain(rows[a].params)]
    for part, filtered in ((plain, False), (filt, True)):
        if not part:
            continue
        idx = [i for a, b in part for i in range(a, b)]
        index = torch.tensor(idx, device=dev) if len(idx) < N else None
        lg = logits if index is None else logits.index_select(0, index)
        temps = torch.tensor([rows[i].params.temperature for i in idx], dtype=torch.float32)
        probs = torch.softmax(lg / temps.to(dev, non_blocking=True)[:, None], dim=-1)
        if filtered:
            probs, ids, flag, width = _filtered(probs, [rows[i].params for i in idx])
        noise = torch.ones_like(probs) if filtered else torch.empty_like(probs)
        k = 0
        for a, b in part:
            # a request draws noise only for its own window (top-k rows: their k candidates), as a contiguous
            # block, so its stream does not depend on the rest of the batch; outside it probs are 0
            g = rows[a].generator
            if filtered:  # drawn for the whole window, whatever part of it the candidates are
                w = _noise_width(rows[a].params, width)
                c = min(w, probs.shape[-1])
                noise[k : k + b - a, :c] = torch.empty(b - a, w, device=dev).exponential_(generator=g)[:, :c]
            else:
                noise[k : k + b - a].exponential_(generator=g)
            k += b - a
        pick = (probs / noise.clamp_min_(_TINY)).argmax(-1)
        if filtered:
            pick = ids.gather(1, pick[:, None])[:, 0]
            if flag is not None:
                unsure = flag if index is None else torch.zeros(N, dtype=torch.bool, device=dev).index_copy_(
                    0, index, flag)
        if index is None:
            out = pick
        else:
            out.index_copy_(0, index, pick)
    return out, unsure


def resample_exact(logits: torch.Tensor, rows: list[Row]) -> torch.Tensor:
    """Draw rows with top-k/top-p over a full sort of the vocabulary (the flagged rows of ``sample_tensor``)."""
    logits = _banned(logits, rows)
    out = torch.empty(len(rows), dtype=torch.long, device=logits.device)
    for a, b in _generator_groups(rows):
        p = rows[a].params
        probs = torch.softmax(logits[a:b] / p.temperature, dim=-1)
        vals, ids = probs.sort(dim=-1, descending=True)
        keep = _keep(vals, torch.tensor([p.top_k] * (b - a), device=logits.device),
                     torch.tensor([p.top_p] * (b - a), device=logits.device))
        noise = torch.empty_like(vals).exponential_(generator=rows[a].generator).clamp_min_(_TINY)
        out[a:b] = ids.gather(1, (vals * keep / noise).argmax(-1, keepdim=True))[:, 0]
    return out


def _banned(logits: torch.Tensor, rows: list[Row]) -> torch.Tensor:
    """``logits`` as float32, with each row's banned ids at -inf (in a copy: the caller's logits stay as they are)."""
    dev = logits.device
    lens = [r.banned.numel() for r in rows]
    out = logits.float()
    if any(lens):
        out = out.clone() if out is logits else out
        ban_rows = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(lens))
        ban_cols = torch.cat([r.banned for r in rows])
        out[ban_rows.to(dev, non_blocking=True), ban_cols.to(dev, non_blocking=True)] = float("-inf")
    return out


def _generator_groups(rows: list[Row]) -> list[tuple[int, int]]:
    """[start, end) of consecutive non-greedy rows drawing from one generator (one request)."""
    groups: list[tuple[int, int]] = []
    for i, r in enumerate(rows):
        if r.params.greedy:
            continue
        if groups and groups[-1][1] == i and rows[groups[-1][0]].generator is r.generator:
            groups[-1] = (groups[-1][0], i + 1)
        else:
            groups.append((i, i + 1))
    return groups


def _is_plain(p: SamplingParams) -> bool:
    return p.top_k == 0 and p.top_p >= 1.0


def _filtered(probs: torch.Tensor, params: list[SamplingParams]):  # noqa: ANN202
    """Each row's candidates (values zeroed outside its top-k / nucleus), their ids, the unsure flags, and
    the window width the noise is drawn for. The candidates are the window's first columns: all of
    it, or on the CPU the first ``FIRST_CANDIDATES`` when every row's top-k or nucleus fits those;
    otherwise the rows that fit them have zeros in the rest."""
    dev = probs.device
    V = probs.shape[-1]
    most_k = max(p.top_k for p in params)
    width = min(V, max(CANDIDATES, most_k))
    top_k = torch.tensor([p.top_k for p in params]).to(dev, non_blocking=True)
    top_p = torch.tensor([p.top_p for p in params], dtype=torch.float32).to(dev, non_blocking=True)
    first = max(FIRST_CANDIDATES, most_k)
    if dev.type == "cpu" and first < width:
        vals, ids = probs.topk(first, dim=-1)
        # the nucleus ends inside (with a margin: the wide window's sums may round differently), or top-k does
        fits = (vals.cumsum(-1)[:, -1] >= top_p * (1 + 1e-5)) | ((top_k > 0) & (top_k <= first))
        if bool(fits.all()):
            return vals * _keep(vals, top_k, top_p), ids, None, width
        # the rows that do not fit take the full window; the others' extra columns are zeros (never drawn)
        wide = torch.nonzero(~fits)[:, 0]
        wide_vals, wide_ids = probs.index_select(0, wide).topk(width, dim=-1)
        vals, ids = F.pad(vals, (0, width - first)), F.pad(ids, (0, width - first))
        vals[wide], ids[wide] = wide_vals, wide_ids
    else:
        vals, ids = probs.topk(width, dim=-1) if width < V else probs.sort(dim=-1, descending=True)
    flag = None
    if width < V:  # the window may cut a nucleus short: unless top-k cuts first, its mass must reach top-p
        flag = (vals.sum(-1) < top_p) & ((top_k == 0) | (top_k > width))
    return vals * _keep(vals, top_k, top_p), ids, flag, width


def _noise_width(p: SamplingParams, width: int) -> int:
    """Candidates a filtered row races over: its top-k when that cuts inside the window, else the window."""
    return min(p.top_k, width) if p.top_k else width


def _keep(vals: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask of sorted (descending) candidates inside each row's top-k and nucleus (the top one always)."""
    rank = torch.arange(vals.shape[-1], device=vals.device)[None, :]
    keep = (vals.cumsum(-1) - vals < top_p[:, None]) & ((top_k[:, None] == 0) | (rank < top_k[:, None]))
    keep[:, 0] = True
    return keep
