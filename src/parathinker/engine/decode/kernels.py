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


def _tk():  # noqa: ANN202 - the module
    """The Triton kernels, imported on first use: a CPU run never pays for importing Triton."""
    from . import triton_kernels

    return triton_kernels


# ---------------------------------------------------------------- entry points
def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
                use_triton: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(normed, new residual) of (B, D) rows; ``residual`` None: the first layer (residual = x)."""
    if not use_triton:
        return add_rmsnorm_torch(x, residual, weight, eps)
    B, D = x.shape
    out = torch.empty(B, D, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    res = torch.empty_like(x)
    tk = _tk()
    tk._add_rmsnorm_kernel[(B,)](x, residual if residual is not None else x, weight, out, res, D, eps,
                                 HAS_RES=residual is not None, BLOCK=tk.triton.next_power_of_2(D))
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
    tk = _tk()
    tk._rope_write_kernel[(B, heads + kv_heads)](
        qkv, cos, sin, seg, seg_table if seg_table is not None else cos, q, kc, vc, slots,
        qkv.stride(0), kc.stride(0), kc.stride(1), vc.stride(0), vc.stride(1),
        H=heads, KVH=kv_heads, HALF=hd // 2, BLOCK=tk.triton.next_power_of_2(hd // 2), HAS_SEG=seg_table is not None,
    )
    return q


def silu_mul(gate_up: torch.Tensor, use_triton: bool) -> torch.Tensor:
    """SiLU(gate) * up of (B, 2I) = [gate | up] -> (B, I)."""
    if not use_triton:
        return silu_mul_torch(gate_up)
    B, I2 = gate_up.shape
    out = torch.empty(B, I2 // 2, dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    tk = _tk()
    tk._silu_mul_kernel[(B, tk.triton.cdiv(I2 // 2, block))](gate_up, out, I2 // 2, BLOCK=block)
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
    tk = _tk()
    tk._merge_kernel[(R, KVH * G)](
        row_entries, K, o0, l0, o1, l1, out, e0, e0 + L1 * q1, KVH, s0, o0.shape[3], q0, S1, BQG1, q1, G=G, D=D,
        SB0=tk.triton.next_power_of_2(max(1, s0)), SB1=tk.triton.next_power_of_2(S1), HAS0=len(parts) == 2,
    )
    return out
