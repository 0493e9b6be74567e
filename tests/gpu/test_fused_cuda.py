"""The fused decode kernels compiled on a GPU: against their torch twins (fp32 and bf16, Qwen2.5-1.5B
shapes), and the engine's fused step against the modular one. Run with `pytest -m gpu`.
"""

from __future__ import annotations

import random

import pytest
import torch

from parathinker import LLM, CacheConfig, DecodeConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

H, KVH, HD, D, INTER = 12, 2, 128, 1536, 8960  # Qwen2.5-1.5B


def _tol(dtype):
    return dict(rtol=0, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_elementwise_kernels_match_twins(dtype):
    from parathinker.engine.decode import kernels

    g = torch.Generator(device="cuda").manual_seed(0)
    B = 16
    x = torch.randn(B, D, device="cuda", generator=g).to(dtype)
    r = torch.randn(B, D, device="cuda", generator=g).to(dtype)
    w = torch.randn(D, device="cuda", generator=g).to(dtype)
    for res in (None, r):
        a, ra = kernels.add_rmsnorm(x, res, w, 1e-6, use_triton=True)
        b, rb = kernels.add_rmsnorm_torch(x, res, w, 1e-6)
        torch.testing.assert_close(ra, rb, rtol=0, atol=0)
        torch.testing.assert_close(a, b, **_tol(dtype))
    gu = torch.randn(B, 2 * INTER, device="cuda", generator=g).to(dtype)
    torch.testing.assert_close(kernels.silu_mul(gu, True), kernels.silu_mul_torch(gu), **_tol(dtype))
    qkv = torch.randn(B, (H + 2 * KVH) * HD, device="cuda", generator=g).to(dtype)
    pos = torch.randint(0, 32000, (B,), device="cuda", dtype=torch.int32, generator=g)
    seg = torch.randint(0, 17, (B,), device="cuda", dtype=torch.int32, generator=g)
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, HD, 2, device="cuda").float() / HD))
    table = torch.randn(17, HD, device="cuda", generator=g).to(dtype)
    slots = torch.randperm(64, device="cuda", generator=g)[:B].int()
    kv1 = torch.zeros(2, 64, KVH, HD, device="cuda", dtype=dtype)
    kv2 = kv1.clone()
    tables = kernels.rope_tables(pos, inv_freq, 1.0)
    q1 = kernels.rope_write(qkv, seg, table, kv1, slots, H, KVH, tables, use_triton=True)
    q2 = kernels.rope_write_torch(qkv, seg, table, kv2, slots, H, KVH, tables)
    tol = _tol(dtype)  # the same float32 cos/sin tables (rope_tables) on both sides
    torch.testing.assert_close(q1, q2, **tol)
    torch.testing.assert_close(kv1, kv2, **tol)


def test_merge_kernel_matches_torch_merge():
    from parathinker.engine.attention.triton import build_lists, merge_partials, row_entry_table
    from parathinker.engine.decode import kernels

    g = torch.Generator(device="cuda").manual_seed(1)
    G = H // KVH
    classes = [build_lists([([0], 64, list(range(16)))], "cuda", splits=8),
               build_lists([([1], 64, [r]) for r in range(16)], "cuda", splits=32)]
    entries = row_entry_table(classes, 16, "cuda")
    parts = []
    for c in classes:
        L, Q = c.rows.shape
        bqg = max(16, 1 << (Q * G - 1).bit_length())
        o = torch.randn(L, KVH, c.splits, bqg, HD, device="cuda", generator=g)
        lse = torch.randn(L, KVH, c.splits, bqg, device="cuda", generator=g) * 4
        lse[:, :, ::3] = float("-inf")
        parts.append((o, lse, Q))
    torch.testing.assert_close(kernels.merge(parts, entries, G, torch.float32), merge_partials(parts, entries, G),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_engine_scores_like_modular(tiny_qwen2, dtype):
    """Teacher-forced log-probs with the fused step (graphs on) vs the modular step (graphs on) vs reference."""
    cache = CacheConfig(kv_cache_memory=0.25)
    fused = LLM(tiny_qwen2, device="cuda", dtype=dtype, cache=cache, decode=DecodeConfig(attention="triton", fused_decode=True))
    modular = LLM(tiny_qwen2, device="cuda", dtype=dtype, cache=cache,
                  decode=DecodeConfig(attention="triton", fused_decode=False))
    rng = random.Random(3)
    prompt = [rng.randrange(4, 50) for _ in range(40)]
    paths = [[rng.randrange(4, 50) for _ in range(rng.randrange(1, 30))] for _ in range(5)]
    a, b = fused.score(prompt, paths, [5, 6, 7]), modular.score(prompt, paths, [5, 6, 7])
    diff = max(abs(x - y) for x, y in zip(a.token_logprobs, b.token_logprobs) if x == x)
    assert diff <= (1e-4 if dtype == "float32" else 0.1), diff  # bf16: as loose as bf16 vs fp32 (test_engine_cuda)
    dec = fused.engine.runner.decoder
    assert dec.error is None and dec.stats["replays"] > 0 and dec.fused is not None
