"""The Triton kernels of the fused decode step (``kernels``' entry points launch them; see there).

A module of its own so that importing Triton (~0.15 s) happens only where a Triton kernel runs:
CUDA, or Triton's CPU interpreter in the tests (it reads ``TRITON_INTERPRET`` when this is imported).
"""

from __future__ import annotations

import triton
import triton.language as tl


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
