"""Paged decode attention in Triton, with shared-prefix (cascade) work lists.

One decode step: every row (a path, a sample, a summary) has one new query token. Its keys are
scattered over the page pool. The work is cut into *lists*: a list is a slot table plus the query
rows that read it. A row's own tokens form a private list; the prompt a request's paths share is
ONE list read by all of them, so its K/V cross the memory bus once per request and step, not once
per path. Each list is split along its length (flash-decoding) and every (list, kv head, split)
program returns a partial output with its log-sum-exp; the partials of a row are merged exactly.

The kernel runs on CUDA, and on the CPU under ``TRITON_INTERPRET=1`` (how the tests check it
against the reference backend here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the engine falls back to the reference backend
    triton = None
    tl = None


@dataclass
class DecodeLists:
    """Work lists of one decode step. L lists, W slots max per list, Q query rows max per list."""

    slots: torch.Tensor  # (L, W) int32 cache slots, padded
    lens: torch.Tensor  # (L,) int32 valid slots per list
    rows: torch.Tensor  # (L, Q) int32 query rows reading the list, padded with -1
    num_rows: int  # R, rows of the step

    @classmethod
    def build(cls, private: list[list[int]], shared: list[tuple[list[int], list[int]]], device) -> DecodeLists:  # noqa: ANN001
        """``private[r]``: the slots only row r reads; ``shared``: (slots, rows) read by several rows."""
        lists = [(s, [r]) for r, s in enumerate(private)] + list(shared)
        W = max(1, max(len(s) for s, _ in lists))
        Q = max(len(rs) for _, rs in lists)
        slots = torch.zeros(len(lists), W, dtype=torch.int32)
        rows = torch.full((len(lists), Q), -1, dtype=torch.int32)
        for i, (s, rs) in enumerate(lists):
            slots[i, : len(s)] = torch.tensor(s, dtype=torch.int32)
            rows[i, : len(rs)] = torch.tensor(rs, dtype=torch.int32)
        lens = torch.tensor([len(s) for s, _ in lists], dtype=torch.int32)
        return cls(slots.to(device), lens.to(device), rows.to(device), len(private))


if triton is not None:

    @triton.jit
    def _decode_kernel(
        Q_ptr, K_ptr, V_ptr, SLOTS, LENS, ROWS, O_part, LSE_part,
        stride_qr, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh,
        W, QMAX, scale,
        G: tl.constexpr, D: tl.constexpr, BLOCK_QG: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr,
    ):
        lst = tl.program_id(0)
        kvh = tl.program_id(1)
        split = tl.program_id(2)
        n_kv = tl.load(LENS + lst)
        qg = tl.arange(0, BLOCK_QG)  # (query row i, head g) pairs: i = qg // G, g = qg % G
        i = qg // G
        g = qg % G
        row = tl.load(ROWS + lst * QMAX + i, mask=i < QMAX, other=-1)
        valid_q = row >= 0
        d = tl.arange(0, D)
        q = tl.load(Q_ptr + row[:, None] * stride_qr + (kvh * G + g)[:, None] * stride_qh + d[None, :],
                    mask=valid_q[:, None], other=0.0).to(tl.float32)
        m = tl.full((BLOCK_QG,), float("-inf"), tl.float32)
        s_sum = tl.zeros((BLOCK_QG,), tl.float32)
        acc = tl.zeros((BLOCK_QG, D), tl.float32)
        start = split * SPLIT
        for off in range(start, start + SPLIT, BLOCK_N):
            n = off + tl.arange(0, BLOCK_N)
            ok = n < n_kv
            slot = tl.load(SLOTS + lst * W + n, mask=ok, other=0).to(tl.int64)
            k = tl.load(K_ptr + slot[:, None] * stride_ks + kvh * stride_kh + d[None, :], mask=ok[:, None], other=0.0)
            v = tl.load(V_ptr + slot[:, None] * stride_vs + kvh * stride_vh + d[None, :], mask=ok[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k.to(tl.float32))) * scale  # (BLOCK_QG, BLOCK_N)
            s = tl.where(ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m - m_safe)
            s_sum = s_sum * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32))
            m = m_new
        has = s_sum > 0
        out = acc / tl.where(has, s_sum, 1.0)[:, None]
        lse = tl.where(has, m + tl.log(tl.where(has, s_sum, 1.0)), float("-inf"))
        nsplit = tl.num_programs(2)
        base = ((lst * tl.num_programs(1) + kvh) * nsplit + split) * BLOCK_QG
        tl.store(O_part + (base + qg)[:, None] * D + d[None, :], out)
        tl.store(LSE_part + base + qg, lse)


def decode_attention(
    q: torch.Tensor,  # (R, H, D) one query per row, after RoPE
    k_cache: torch.Tensor,  # (slots, KVH, D)
    v_cache: torch.Tensor,  # (slots, KVH, D)
    lists: DecodeLists,
    split: int = 512,
    block_n: int = 32,
) -> torch.Tensor:  # (R, H, D)
    """Attention of each row's query over the union of the lists it appears in (exact softmax)."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    R, H, D = q.shape
    KVH = k_cache.shape[1]
    G = H // KVH
    L, W = lists.slots.shape
    Qmax = lists.rows.shape[1]
    block_qg = max(16, triton.next_power_of_2(Qmax * G))
    split = max(block_n, min(split, triton.next_power_of_2(W)))
    n_split = triton.cdiv(W, split)
    o_part = torch.empty(L, KVH, n_split, block_qg, D, dtype=torch.float32, device=q.device)
    lse_part = torch.empty(L, KVH, n_split, block_qg, dtype=torch.float32, device=q.device)
    _decode_kernel[(L, KVH, n_split)](
        q, k_cache, v_cache, lists.slots, lists.lens, lists.rows, o_part, lse_part,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        W, Qmax, 1.0 / math.sqrt(D),
        G=G, D=D, BLOCK_QG=block_qg, BLOCK_N=block_n, SPLIT=split,
    )
    return merge_partials(o_part, lse_part, lists.rows, R, G).to(q.dtype)


def merge_partials(o_part: torch.Tensor, lse_part: torch.Tensor, rows: torch.Tensor, R: int, G: int) -> torch.Tensor:
    """Combine (list, kv head, split) partials into each row's output: softmax over all their keys."""
    L, KVH, S, BQG, D = o_part.shape
    Qmax = rows.shape[1]
    o = o_part[..., : Qmax * G, :].reshape(L, KVH, S, Qmax, G, D).permute(0, 3, 1, 4, 2, 5)  # (L, Q, KVH, G, S, D)
    lse = lse_part[..., : Qmax * G].reshape(L, KVH, S, Qmax, G).permute(0, 3, 1, 4, 2)  # (L, Q, KVH, G, S)
    flat_rows = rows.reshape(-1).long()
    keep = flat_rows >= 0
    o = o.reshape(L * Qmax, KVH * G, S, D)[keep]
    lse = lse.reshape(L * Qmax, KVH * G, S)[keep]
    who = flat_rows[keep]
    # per row: the max lse over all its partials, then exp-weighted sums (scatter over lists)
    row_max = torch.full((R, KVH * G), float("-inf"), device=o.device)
    row_max = row_max.scatter_reduce(0, who[:, None].expand(-1, KVH * G), lse.amax(-1), "amax")
    w = torch.exp(lse - row_max[who][..., None])  # (n, H, S); -inf partials weigh 0
    w = torch.nan_to_num(w, nan=0.0)
    num = torch.zeros(R, KVH * G, D, device=o.device).index_add_(0, who, (w[..., None] * o).sum(2))
    den = torch.zeros(R, KVH * G, device=o.device).index_add_(0, who, w.sum(2))
    return num / den.clamp_min(1e-30)[..., None]
