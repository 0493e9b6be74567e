"""Fused kernels of the decode step: few, small launches per layer instead of ~50.

A decode step at batch 1-16 on a GPU is bound by how many kernels it launches, not by bytes: the
modular forward spends ~50 launches per layer on RMSNorm, RoPE, thought embeddings, the K/V
write, SiLU and a split merge. Here each of those is one kernel:

    add_rmsnorm   residual add + RMSNorm (+ weight), one row per program
    rope_write    RoPE of q and k, thought embedding added to k and v, k and v stored in their
                  pool slots; q returned. One (row, head) per program; cos/sin computed once
                  per step in torch (``rope_tables``: the model's exact float32 angles)
    silu_mul      SiLU(gate) * up over the fused gate|up projection
    merge         combine a row's flash-decoding partials (log-sum-exp weighted) into its output

Every op has a torch twin with the same arithmetic as the modular model (``model/model.py``):
the twin runs on the CPU (and is what the Triton versions are tested against in Triton's CPU
interpreter); the Triton version runs on CUDA. Accumulation is float32 in both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attention.base import write_kv

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None
    tl = None


# ---------------------------------------------------------------- torch twins (CPU, and the oracle)
def add_rmsnorm_torch(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                      eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(x + residual) * weight, x + residual); x (B, D). Same rounding as the modular model."""
    r = x if residual is None else x + residual
    if r.dtype == torch.float32 and weight.dtype == torch.float32:  # one op; the same bits as below in float32
        return F.rms_norm(r, r.shape[-1:], weight, eps), r
    rf = r.float()
    y = (rf * torch.rsqrt(rf.pow(2).mean(-1, keepdim=True) + eps)).to(r.dtype)
    return weight * y, r


def rope_rotation(tables: tuple[torch.Tensor, torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``rope_tables`` (B, hd/2) -> the twin's full-width (cos | cos, -sin | sin), (B, 1, hd) in ``dtype``.

    RoPE of x = (x1 | x2) is x * (cos | cos) + (x2 | x1) * (-sin | sin): the model's
    ``x * cos + rotate_half(x) * sin`` with the same products and sums, so the same bits.
    """
    cos, sin = tables
    return torch.cat((cos, cos), dim=-1)[:, None].to(dtype), torch.cat((-sin, sin), dim=-1)[:, None].to(dtype)


def rope_write_torch(qkv: torch.Tensor, seg: torch.Tensor, seg_table: torch.Tensor | None, kv: torch.Tensor,
                     slots: torch.Tensor, heads: int, kv_heads: int, tables: tuple[torch.Tensor, torch.Tensor],
                     rotation: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """q (B, H, hd) after RoPE; k' = RoPE(k + T[seg]) and v' = v + T[seg] stored at ``slots`` of ``kv``.

    Works in ``qkv``'s buffer: its k and v parts get the thought embedding in place (the fused step's
    projection output, used once). q and k are rotated in one pass; ``rotation``: ``rope_rotation(tables)``
    when the caller made it once for every layer.
    """
    B, hd = qkv.shape[0], kv.shape[-1]
    n = heads + kv_heads  # the heads RoPE turns: q's and k's
    x = qkv.reshape(B, n + kv_heads, hd)
    if seg_table is not None:
        x[:, heads:] += F.embedding(seg.reshape(-1).long(), seg_table)[:, None, :].to(x.dtype)
    cos, sin = rotation if rotation is not None else rope_rotation(tables, x.dtype)
    qk = x[:, :n]
    qk = qk * cos + qk.unflatten(-1, (2, hd // 2)).flip(-2).flatten(-2) * sin
    write_kv(kv, slots.reshape(-1).long(), qk[:, heads:], x[:, n:])
    return qk[:, :heads]


def silu_mul_torch(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


# ---------------------------------------------------------------- Triton
if triton is not None:

    @triton.jit
    def _add_rmsnorm_kernel(X, R, W, OUT, ROUT, D, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        ok = cols < D
        x = tl.load(X + row * D + cols, mask=ok, other=0.0)
        if HAS_RES:
            r = tl.load(R + row * D + cols, mask=ok, other=0.0)
            x = (x.to(tl.float32) + r.to(tl.float32)).to(ROUT.dtype.element_ty)  # rounded like the model's add
        tl.store(ROUT + row * D + cols, x, mask=ok)
        xf = x.to(tl.float32)
        rstd = tl.rsqrt(tl.sum(xf * xf, 0) / D + eps)
        y = (xf * rstd).to(ROUT.dtype.element_ty)
        w = tl.load(W + cols, mask=ok, other=0.0)
        tl.store(OUT + row * D + cols, (w.to(tl.float32) * y.to(tl.float32)).to(OUT.dtype.element_ty), mask=ok)

    @triton.jit
    def _rope_write_kernel(QKV, COS, SIN, SEG, SEGT, QOUT, KC, VC, SLOTS,
                           stride_qkv, stride_ks, stride_kh, stride_vs, stride_vh,
                           H: tl.constexpr, KVH: tl.constexpr, HALF: tl.constexpr, BLOCK: tl.constexpr,
                           HAS_SEG: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1)  # q heads 0..H-1, then kv heads
        j = tl.arange(0, BLOCK)
        ok = j < HALF
        cos = tl.load(COS + b * HALF + j, mask=ok, other=0.0)
        sin = tl.load(SIN + b * HALF + j, mask=ok, other=0.0)
        row = QKV + b * stride_qkv
        if h < H:
            x1 = tl.load(row + h * 2 * HALF + j, mask=ok, other=0.0).to(tl.float32)
            x2 = tl.load(row + h * 2 * HALF + HALF + j, mask=ok, other=0.0).to(tl.float32)
            out = QOUT + (b * H + h) * 2 * HALF
            tl.store(out + j, (x1 * cos - x2 * sin).to(QOUT.dtype.element_ty), mask=ok)
            tl.store(out + HALF + j, (x2 * cos + x1 * sin).to(QOUT.dtype.element_ty), mask=ok)
        else:
            kh = h - H
            k1 = tl.load(row + (H + kh) * 2 * HALF + j, mask=ok, other=0.0).to(tl.float32)
            k2 = tl.load(row + (H + kh) * 2 * HALF + HALF + j, mask=ok, other=0.0).to(tl.float32)
            v1 = tl.load(row + (H + KVH + kh) * 2 * HALF + j, mask=ok, other=0.0).to(tl.float32)
            v2 = tl.load(row + (H + KVH + kh) * 2 * HALF + HALF + j, mask=ok, other=0.0).to(tl.float32)
            if HAS_SEG:
                s = tl.load(SEG + b).to(tl.int64)
                t1 = tl.load(SEGT + s * 2 * HALF + j, mask=ok, other=0.0).to(tl.float32)
                t2 = tl.load(SEGT + s * 2 * HALF + HALF + j, mask=ok, other=0.0).to(tl.float32)
                k1, k2, v1, v2 = k1 + t1, k2 + t2, v1 + t1, v2 + t2
            slot = tl.load(SLOTS + b).to(tl.int64)
            kp = KC + slot * stride_ks + kh * stride_kh
            vp = VC + slot * stride_vs + kh * stride_vh
            tl.store(kp + j, (k1 * cos - k2 * sin).to(KC.dtype.element_ty), mask=ok)
            tl.store(kp + HALF + j, (k2 * cos + k1 * sin).to(KC.dtype.element_ty), mask=ok)
            tl.store(vp + j, v1.to(VC.dtype.element_ty), mask=ok)
            tl.store(vp + HALF + j, v2.to(VC.dtype.element_ty), mask=ok)

    @triton.jit
    def _silu_mul_kernel(GU, OUT, N, BLOCK: tl.constexpr):  # N: the intermediate size
        b = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = cols < N
        g = tl.load(GU + b * 2 * N + cols, mask=ok, other=0.0).to(tl.float32)
        u = tl.load(GU + b * 2 * N + N + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(OUT + b * N + cols, (g / (1.0 + tl.exp(-g)) * u).to(OUT.dtype.element_ty), mask=ok)

    @triton.jit
    def _merge_class(OUT_P, LSE, e, lo, hi, S, BQG, Q, KVH, kvh, g, d, m, den, acc, G: tl.constexpr, D: tl.constexpr,
                     SB: tl.constexpr):
        """Fold entry ``e`` of the class holding entries [lo, hi) into (m, den, acc): all its S splits at once."""
        s = tl.arange(0, SB)
        ev = e + s * 0  # the entry as a vector: vector masks only (Triton's interpreter rejects scalar & vector)
        ok = (ev >= lo) & (ev < hi) & (s < S)
        el = tl.where(ok, ev - lo, 0)  # (list, query slot) = (el // Q, el % Q) within the class
        idx = (((el // Q) * KVH + kvh) * S + s) * BQG + (el % Q) * G + g  # (SB,)
        lse = tl.load(LSE + idx, mask=ok, other=float("-inf"))
        o = tl.load(OUT_P + idx[:, None] * D + d[None, :], mask=ok[:, None], other=0.0)  # (SB, D)
        m_new = tl.maximum(m, tl.max(lse, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        a = tl.exp(m - m_safe)
        w = tl.exp(lse - m_safe)  # (SB,); 0 for empty splits and masked lanes
        return m_new, den * a + tl.sum(w, 0), acc * a + tl.sum(o * w[:, None], 0)

    @triton.jit
    def _merge_kernel(ENT, K, O0, L0, O1, L1, OUT, E0, SENT, KVH, S0, BQG0, Q0, S1, BQG1, Q1,
                      G: tl.constexpr, D: tl.constexpr, SB0: tl.constexpr, SB1: tl.constexpr, HAS0: tl.constexpr):
        r = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1)
        kvh = h // G
        g = h % G
        d = tl.arange(0, D)
        m = tl.full((1,), float("-inf"), tl.float32)  # (1,): loop-carried like the values it meets
        den = tl.zeros((1,), tl.float32)
        acc = tl.zeros((D,), tl.float32)
        for k in range(K):  # the row's entries (a handful); each entry's splits are read in one vector load
            e = tl.load(ENT + r * K + k)
            # class 0: the shared lists, entries [0, E0); class 1: the single lists, [E0, SENT); SENT holds nothing
            if HAS0:
                m, den, acc = _merge_class(O0, L0, e, 0, E0, S0, BQG0, Q0, KVH, kvh, g, d, m, den, acc, G, D, SB0)
            m, den, acc = _merge_class(O1, L1, e, E0, SENT, S1, BQG1, Q1, KVH, kvh, g, d, m, den, acc, G, D, SB1)
        out = acc / tl.maximum(den, 1e-30)
        tl.store(OUT + (r * (KVH * G) + h) * D + d, out.to(OUT.dtype.element_ty))


# ---------------------------------------------------------------- entry points
def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
                use_triton: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(normed, new residual) of (B, D) rows; ``residual`` None: the first layer (residual = x)."""
    if not use_triton:
        return add_rmsnorm_torch(x, residual, weight, eps)
    B, D = x.shape
    out = torch.empty(B, D, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    res = torch.empty_like(x)
    _add_rmsnorm_kernel[(B,)](x, residual if residual is not None else x, weight, out, res, D, eps,
                              HAS_RES=residual is not None, BLOCK=triton.next_power_of_2(D))
    return out, res


def rope_tables(pos: torch.Tensor, inv_freq: torch.Tensor, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (B, hd/2) float32 of each row's position: once per step, shared by every layer's ``rope_write``."""
    f = pos.reshape(-1)[:, None].float() * inv_freq
    return f.cos() * scaling, f.sin() * scaling


def rope_write(qkv: torch.Tensor, seg: torch.Tensor, seg_table: torch.Tensor | None, kv: torch.Tensor,
               slots: torch.Tensor, heads: int, kv_heads: int, tables: tuple[torch.Tensor, torch.Tensor],
               use_triton: bool, rotation: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """RoPE + thought embeddings + K/V store of one decode token per row; returns q (B, H, hd).

    ``qkv`` (B, (H + 2 KVH) hd) from the fused projection; ``seg``/``slots`` (B,) or (B, 1); ``kv`` one
    layer's pool (2, slots, KVH, hd); ``tables``: ``rope_tables`` of the rows' positions (made once per step);
    ``rotation``: the torch twin's ``rope_rotation(tables)``, also once per step (Triton reads ``tables``).
    """
    if not use_triton:
        return rope_write_torch(qkv, seg, seg_table, kv, slots, heads, kv_heads, tables, rotation)
    B = qkv.shape[0]
    hd = kv.shape[-1]
    cos, sin = tables
    q = torch.empty(B, heads, hd, dtype=qkv.dtype, device=qkv.device)
    kc, vc = kv[0], kv[1]
    _rope_write_kernel[(B, heads + kv_heads)](
        qkv, cos, sin, seg, seg_table if seg_table is not None else cos, q, kc, vc, slots,
        qkv.stride(0), kc.stride(0), kc.stride(1), vc.stride(0), vc.stride(1),
        H=heads, KVH=kv_heads, HALF=hd // 2, BLOCK=triton.next_power_of_2(hd // 2), HAS_SEG=seg_table is not None,
    )
    return q


def silu_mul(gate_up: torch.Tensor, use_triton: bool) -> torch.Tensor:
    """SiLU(gate) * up of (B, 2I) = [gate | up] -> (B, I)."""
    if not use_triton:
        return silu_mul_torch(gate_up)
    B, I2 = gate_up.shape
    out = torch.empty(B, I2 // 2, dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_mul_kernel[(B, triton.cdiv(I2 // 2, block))](gate_up, out, I2 // 2, BLOCK=block)
    return out


def merge(parts: list[tuple[torch.Tensor, torch.Tensor, int]], row_entries: torch.Tensor, G: int,
          dtype: torch.dtype) -> torch.Tensor:
    """``attention.triton.merge_partials`` in one launch (one or two classes: shared lists, then single lists)."""
    if len(parts) not in (1, 2):
        raise ValueError(f"merge takes one or two classes of partials, got {len(parts)}")
    (o0, l0, q0), (o1, l1, q1) = parts if len(parts) == 2 else ((parts[0][0], parts[0][1], 1), parts[0])
    e0 = o0.shape[0] * q0 if len(parts) == 2 else 0
    s0 = o0.shape[2] if len(parts) == 2 else 0
    L1, KVH, S1, BQG1, D = o1.shape
    R, K = row_entries.shape
    out = torch.empty(R, KVH * G, D, dtype=dtype, device=o1.device)
    _merge_kernel[(R, KVH * G)](
        row_entries, K, o0, l0, o1, l1, out, e0, e0 + L1 * q1, KVH, s0, o0.shape[3], q0, S1, BQG1, q1, G=G, D=D,
        SB0=triton.next_power_of_2(max(1, s0)), SB1=triton.next_power_of_2(S1), HAS0=len(parts) == 2,
    )
    return out
