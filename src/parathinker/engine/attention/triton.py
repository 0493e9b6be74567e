"""Paged decode attention in Triton, over per-list PAGE tables, with shared-prefix (cascade) lists.

One decode step: every row (a path, a sample, a summary) has one new query token. Its keys live
in runs of pages of the pool. The work is cut into *lists*: a list is one run (a page table and a
token count) plus the query rows that read it. A row's own runs are lists of one row; the prompt a
request's paths share is ONE list read by all of them, so its K/V cross the memory bus once per
request and step, not once per path. Token ``n`` of a list is at slot
``pages[n // page_size] * page_size + n % page_size``.

Each list is cut into ``splits`` equal parts of its *current* length (flash-decoding), so a grid
sized once for a capacity (CUDA graphs) does no work past a list's end. Every (list, kv head,
split) program returns a partial output with its log-sum-exp; ``merge_partials`` combines the
partials of each row exactly, with static shapes only (no boolean indexing, no host sync), so the
whole step can be captured in a CUDA graph.

The kernel runs on CUDA, and on the CPU under ``TRITON_INTERPRET=1`` (how the tests check it
against the reference backend here).
"""

from __future__ import annotations

import math

import torch

from ..plan import DecodeLists
from .base import write_kv

try:
    import triton
    import triton.language as tl
except ImportError:  # the engine falls back to the reference backend
    triton = None
    tl = None



def build_lists(
    lists: list[tuple[list[int], int, list[int]]], device: torch.device | str, splits: int = 8
) -> DecodeLists:
    """(pages, length, rows) per list -> a ``DecodeLists`` (tests and one-off use; the engine fills buffers)."""
    P = max(1, max(len(p) for p, _, _ in lists))
    Q = max(1, max(len(r) for _, _, r in lists))
    pages = torch.zeros(len(lists), P, dtype=torch.int32)
    rows = torch.full((len(lists), Q), -1, dtype=torch.int32)
    for i, (pg, _, rs) in enumerate(lists):
        pages[i, : len(pg)] = torch.tensor(pg, dtype=torch.int32)
        rows[i, : len(rs)] = torch.tensor(rs, dtype=torch.int32)
    lens = torch.tensor([n for _, n, _ in lists], dtype=torch.int32)
    return DecodeLists(pages.to(device), lens.to(device), rows.to(device), splits)


def row_entry_table(classes: list[DecodeLists], num_rows: int, device: torch.device | str) -> torch.Tensor:
    """(R, K) int32: the entries (see ``merge_partials``) each row's partials are in; padded with the sentinel."""
    per_row: list[list[int]] = [[] for _ in range(num_rows)]
    base = 0
    for c in classes:
        Q = c.rows.shape[1]
        for e, r in enumerate(c.rows.reshape(-1).tolist()):
            if r >= 0:
                per_row[r].append(base + e)
        base += c.rows.shape[0] * Q
    K = max(1, max(len(e) for e in per_row))
    table = torch.full((num_rows, K), base, dtype=torch.int32)
    for r, es in enumerate(per_row):
        table[r, : len(es)] = torch.tensor(es, dtype=torch.int32)
    return table.to(device)


if triton is not None:

    @triton.jit
    def _decode_kernel(
        Q_ptr, K_ptr, V_ptr, PAGES, LENS, ROWS, O_part, LSE_part,
        stride_qr, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh,
        MAXP, QMAX, scale,
        G: tl.constexpr, D: tl.constexpr, BLOCK_QG: tl.constexpr, BLOCK_N: tl.constexpr,
        PAGE: tl.constexpr, LOWP: tl.constexpr,
    ):
        lst = tl.program_id(0)
        kvh = tl.program_id(1)
        split = tl.program_id(2)
        n_kv = tl.load(LENS + lst)
        NSPLIT = tl.num_programs(2)  # runtime, not a constexpr: one compiled kernel for every split count
        # this program's share of the list's CURRENT length: nothing past the end, whatever the grid
        per = tl.cdiv(tl.cdiv(n_kv, NSPLIT), BLOCK_N) * BLOCK_N
        start = split * per
        end = tl.minimum(start + per, n_kv)
        qg = tl.arange(0, BLOCK_QG)  # (query row i, head g) pairs: i = qg // G, g = qg % G
        i = qg // G
        g = qg % G
        row = tl.load(ROWS + lst * QMAX + i, mask=i < QMAX, other=-1)
        valid_q = row >= 0
        d = tl.arange(0, D)
        q = tl.load(Q_ptr + row[:, None] * stride_qr + (kvh * G + g)[:, None] * stride_qh + d[None, :],
                    mask=valid_q[:, None], other=0.0)
        # half-precision cache: tensor-core dots in its dtype, fp32 accumulation (compiled only: Triton's CPU
        # interpreter mis-converts fp32 -> bf16, so the CPU tests use fp32 caches and tests/gpu covers bf16)
        if LOWP:  # noqa: SIM108
            q = q.to(K_ptr.dtype.element_ty)
        else:
            q = q.to(tl.float32)
        m = tl.full((BLOCK_QG,), float("-inf"), tl.float32)
        s_sum = tl.zeros((BLOCK_QG,), tl.float32)
        acc = tl.zeros((BLOCK_QG, D), tl.float32)
        for off in range(start, end, BLOCK_N):
            n = off + tl.arange(0, BLOCK_N)
            ok = n < end
            page = tl.load(PAGES + lst * MAXP + n // PAGE, mask=ok, other=0).to(tl.int64)
            slot = page * PAGE + n % PAGE
            k = tl.load(K_ptr + slot[:, None] * stride_ks + kvh * stride_kh + d[None, :], mask=ok[:, None], other=0.0)
            v = tl.load(V_ptr + slot[:, None] * stride_vs + kvh * stride_vh + d[None, :], mask=ok[:, None], other=0.0)
            if LOWP:
                s = tl.dot(q, tl.trans(k)) * scale  # (BLOCK_QG, BLOCK_N), fp32
            else:
                s = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee") * scale
            s = tl.where(ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m - m_safe)
            s_sum = s_sum * alpha + tl.sum(p, 1)
            if LOWP:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            else:
                acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
            m = m_new
        has = s_sum > 0
        out = acc / tl.where(has, s_sum, 1.0)[:, None]
        lse = tl.where(has, m + tl.log(tl.where(has, s_sum, 1.0)), float("-inf"))
        base = ((lst * tl.num_programs(1) + kvh) * NSPLIT + split) * BLOCK_QG
        tl.store(O_part + (base + qg)[:, None] * D + d[None, :], out)
        tl.store(LSE_part + base + qg, lse)


def decode_attention(
    q: torch.Tensor,  # (R, H, D) one query per row, after RoPE
    k_cache: torch.Tensor,  # (slots, KVH, D)
    v_cache: torch.Tensor,  # (slots, KVH, D)
    classes: list[DecodeLists],
    row_entries: torch.Tensor,  # (R, K) int32, see row_entry_table
    page_size: int,
    block_n: int = 32,
    merge_kernel: bool = False,
) -> torch.Tensor:  # (R, H, D)
    """Attention of each row's query over the union of the lists it appears in (exact softmax).

    Static shapes throughout (grid and buffers from the tensors' shapes only), so it can be captured.
    """
    if triton is None:
        raise RuntimeError("triton is not installed")
    R, H, D = q.shape
    KVH = k_cache.shape[1]
    G = H // KVH
    lowp = k_cache.dtype in (torch.float16, torch.bfloat16)
    parts = []
    for c in classes:
        L, P = c.pages.shape
        Qmax = c.rows.shape[1]
        block_qg = max(16, triton.next_power_of_2(Qmax * G))
        o_part = torch.empty(L, KVH, c.splits, block_qg, D, dtype=torch.float32, device=q.device)
        lse_part = torch.empty(L, KVH, c.splits, block_qg, dtype=torch.float32, device=q.device)
        _decode_kernel[(L, KVH, c.splits)](
            q, k_cache, v_cache, c.pages, c.lens, c.rows, o_part, lse_part,
            q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
            P, Qmax, 1.0 / math.sqrt(D),
            G=G, D=D, BLOCK_QG=block_qg, BLOCK_N=block_n, PAGE=page_size, LOWP=lowp,
            num_warps=8 if block_qg >= 64 else 4,
        )
        parts.append((o_part, lse_part, Qmax))
    if merge_kernel and len(parts) <= 2:
        from ..decode.kernels import merge

        return merge(parts, row_entries, G, q.dtype)
    return merge_partials(parts, row_entries, G).to(q.dtype)


def merge_partials(
    parts: list[tuple[torch.Tensor, torch.Tensor, int]], row_entries: torch.Tensor, G: int
) -> torch.Tensor:
    """Combine the partials into each row's output: the softmax over all the keys of all its lists.

    ``parts``: per class, o (L, KVH, S, BQG, D), lse (L, KVH, S, BQG) and Q. An *entry* is one
    (list, query slot) pair, numbered class after class; ``row_entries`` (R, K) names a row's entries,
    padded with the sentinel entry (= the total count), which holds no keys. Only gathers and sums
    over fixed axes: static shapes, deterministic, no host sync; a row with no entries gets zeros.
    """
    nums, dens, maxes = [], [], []
    for o_part, lse_part, Q in parts:
        L, KVH, S, _, D = o_part.shape
        o = o_part[..., : Q * G, :].reshape(L, KVH, S, Q, G, D).permute(0, 3, 1, 4, 2, 5).reshape(L * Q, KVH * G, S, D)
        lse = lse_part[..., : Q * G].reshape(L, KVH, S, Q, G).permute(0, 3, 1, 4, 2).reshape(L * Q, KVH * G, S)
        m = lse.amax(-1)  # (E, H); -inf: no keys in this entry
        m_safe = torch.where(m == float("-inf"), 0.0, m)
        w = torch.exp(lse - m_safe[..., None])  # (E, H, S); empty splits weigh 0
        nums.append((w[..., None] * o).sum(2))  # (E, H, D), relative to exp(m_safe)
        dens.append(w.sum(2))
        maxes.append(m)
    H, D = nums[0].shape[1:]
    dev = nums[0].device
    num = torch.cat([*nums, torch.zeros(1, H, D, device=dev)])  # the sentinel entry last
    den = torch.cat([*dens, torch.zeros(1, H, device=dev)])
    mx = torch.cat([*maxes, torch.full((1, H), float("-inf"), device=dev)])
    idx = row_entries.long()  # (R, K)
    m_e = mx[idx]  # (R, K, H)
    m_row = m_e.amax(1)  # (R, H)
    m_row = torch.where(m_row == float("-inf"), 0.0, m_row)
    scale = torch.exp(m_e - m_row[:, None])  # (R, K, H) in [0, 1]; empty entries weigh 0
    total = (scale[..., None] * num[idx]).sum(1)  # (R, H, D)
    norm = (scale * den[idx]).sum(1)  # (R, H)
    return total / norm.clamp_min(1e-30)[..., None]


def triton_available() -> bool:
    return triton is not None


class TritonDecode:
    """Decode steps (one new token per row) through the Triton kernel over page-table work lists.

    Built from device tensors only (the static buffers of ``graph_runner.DecodeState``), so a
    forward through it can be captured in a CUDA graph.
    """

    def __init__(self, cache: torch.Tensor, slot_mapping: torch.Tensor, classes: list[DecodeLists], row_entries: torch.Tensor,
                 page_size: int, merge_kernel: bool = False):
        self.cache = cache
        self.slot_mapping = slot_mapping.reshape(-1)  # (B,) int32: padded rows -> slot 0
        self._slots = None  # the same as long, for index_copy_ (made on first use)
        self.classes = classes
        self.row_entries = row_entries
        self.page_size = page_size
        self.merge_kernel = merge_kernel  # merge the partials in one Triton launch (else the torch merge)

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self._slots is None:
            self._slots = self.slot_mapping.long()
        write_kv(self.cache[layer], self._slots, k, v)
        return self.attend(layer, q[:, 0])[:, None]  # (B, 1, H, hd)

    def attend(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """q (B, H, hd) over the rows' lists, their new K/V already stored -> (B, H, hd)."""
        kv = self.cache[layer]
        return decode_attention(q, kv[0], kv[1], self.classes, self.row_entries, self.page_size,
                                merge_kernel=self.merge_kernel)
