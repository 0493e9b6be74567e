"""The fused decode step: each Triton kernel (in Triton's CPU interpreter) against its torch twin,
the fused forward against the modular model, and the engine with and without it.

tests/gpu/test_fused_cuda.py runs the compiled kernels in bf16 on a GPU.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from parathinker import LLM, CacheConfig, DecodeConfig, ParallelParams, SamplingParams  # noqa: E402
from parathinker.engine.attention.cascade import PagedCascade  # noqa: E402
from parathinker.engine.attention.triton import build_lists, merge_partials, row_entry_table  # noqa: E402
from parathinker.engine.decode import kernels  # noqa: E402
from parathinker.engine.decode.fused import FusedDecoder  # noqa: E402
from parathinker.model import load_model  # noqa: E402

needs_cpu = pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter test; tests/gpu runs the real one")


@needs_cpu
@pytest.mark.parametrize("with_residual", [False, True])
def test_add_rmsnorm_kernel(with_residual):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 48, generator=g)  # D not a power of two: masked columns
    res = torch.randn(5, 48, generator=g) if with_residual else None
    w = torch.randn(48, generator=g)
    out, r = kernels.add_rmsnorm(x, res, w, 1e-6, use_triton=True)
    ref_out, ref_r = kernels.add_rmsnorm_torch(x, res, w, 1e-6)
    torch.testing.assert_close(r, ref_r, rtol=0, atol=0)
    torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)
    # and the twin is the model's own RMSNorm of x + residual
    from parathinker.model.model import RMSNorm

    norm = RMSNorm(48, 1e-6)
    norm.weight.data = w
    torch.testing.assert_close(ref_out, norm(x if res is None else x + res), rtol=0, atol=0)


@needs_cpu
@pytest.mark.parametrize("seg", [True, False])
def test_rope_write_kernel(seg):
    g = torch.Generator().manual_seed(1)
    B, H, KVH, hd, slots = 3, 4, 2, 16, 40
    qkv = torch.randn(B, (H + 2 * KVH) * hd, generator=g)
    pos = torch.tensor([0, 7, 1000], dtype=torch.int32)
    segs = torch.tensor([0, 3, 5], dtype=torch.int32)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    table = torch.randn(8, hd, generator=g) if seg else None
    where = torch.tensor([5, 17, 0], dtype=torch.int32)
    kv_a, kv_b = torch.zeros(2, slots, KVH, hd), torch.zeros(2, slots, KVH, hd)
    tables = kernels.rope_tables(pos, inv_freq, 0.7)
    q = kernels.rope_write(qkv, segs, table, kv_a, where, H, KVH, tables, use_triton=True)
    q_ref = kernels.rope_write_torch(qkv, segs, table, kv_b, where, H, KVH, tables)
    torch.testing.assert_close(q, q_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kv_a, kv_b, rtol=1e-5, atol=1e-5)
    assert kv_a[:, [5, 17, 0]].abs().sum(-1).gt(0).all() and kv_a[:, 1:5].eq(0).all()  # only the given slots


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_write_twin_is_the_models_rope_bit_for_bit(dtype):
    """The twin's one-pass RoPE of q|k (and thought embedding added to k, v) gives the modular model's bits."""
    from parathinker.model.model import _rotate_half

    g = torch.Generator().manual_seed(5)
    B, H, KVH, hd = 6, 6, 2, 32
    qkv = torch.randn(B, (H + 2 * KVH) * hd, generator=g).to(dtype)
    pos, segs = torch.randint(0, 4000, (B,), generator=g), torch.randint(0, 5, (B,), generator=g)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    table = torch.randn(5, hd, generator=g).to(dtype)
    slots = torch.randperm(20, generator=g)[:B]
    tables = kernels.rope_tables(pos, inv_freq, 0.8)
    kv = torch.zeros(2, 20, KVH, hd, dtype=dtype)
    q = kernels.rope_write_torch(qkv.clone(), segs, table, kv, slots, H, KVH, tables)
    cos, sin = (torch.cat((x, x), dim=-1)[:, None, :].to(dtype) for x in tables)  # the model's Rotary layout
    q_ref, k_ref, v_ref = qkv.view(B, H + 2 * KVH, hd).split([H, KVH, KVH], dim=1)
    t = table[segs][:, None]
    k_ref, v_ref = k_ref + t, v_ref + t
    assert torch.equal(q, q_ref * cos + _rotate_half(q_ref) * sin)
    assert torch.equal(kv[0, slots], k_ref * cos + _rotate_half(k_ref) * sin)
    assert torch.equal(kv[1, slots], v_ref)


@needs_cpu
def test_silu_mul_kernel():
    x = torch.randn(3, 2 * 1500, generator=torch.Generator().manual_seed(2))  # two blocks, the second partial
    torch.testing.assert_close(kernels.silu_mul(x, use_triton=True), kernels.silu_mul_torch(x), rtol=1e-6, atol=1e-6)


@needs_cpu
@pytest.mark.parametrize("two_classes", [True, False])
def test_merge_kernel_matches_torch_merge(two_classes):
    """Random partials, rows with 0-3 entries, empty splits (lse -inf): the one-launch merge == merge_partials."""
    g = torch.Generator().manual_seed(3)
    KVH, G, D, R = 2, 3, 16, 5
    classes = []
    if two_classes:
        classes.append(build_lists([([0], 4, [0, 1, 2]), ([1], 4, [3])], "cpu", splits=2))
    classes.append(build_lists([([2], 4, [r]) for r in (0, 1, 3, 3)], "cpu", splits=3))  # row 4: nothing
    entries = row_entry_table(classes, R, "cpu")
    parts = []
    for c in classes:
        L, Q = c.rows.shape
        bqg = max(16, 1 << (Q * G - 1).bit_length())
        o = torch.randn(L, KVH, c.splits, bqg, D, generator=g)
        lse = torch.randn(L, KVH, c.splits, bqg, generator=g) * 3
        lse[:, :, -1] = float("-inf")  # an empty split in every list
        parts.append((o, lse, Q))
    ref = merge_partials(parts, entries, G)
    out = kernels.merge(parts, entries, G, torch.float32)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert out[4].eq(0).all()  # a padded row merges nothing


def test_fuse_projections_views_and_values(tiny_qwen2):
    model = load_model(tiny_qwen2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, model.config.hidden_size)
    attn = model.model.layers[0].self_attn
    ref = attn.q_proj(x)
    model.fuse_projections()
    w, b = attn.qkv
    assert attn.q_proj.weight.data_ptr() == w.data_ptr() and attn.v_proj.bias.data_ptr() > b.data_ptr()
    assert model.model.layers[0].mlp.up_proj.weight.untyped_storage().data_ptr() == \
        model.model.layers[0].mlp.gate_up[0].untyped_storage().data_ptr()
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    torch.testing.assert_close(attn.q_proj(x), ref, rtol=0, atol=0)
    model.fuse_projections()
    assert attn.qkv[0].data_ptr() == w.data_ptr()  # idempotent
    model.to(torch.float64)
    model.fuse_projections()  # the old views were replaced by .to(): fused again
    assert attn.qkv[0].dtype == torch.float64 and attn.q_proj.weight.data_ptr() == attn.qkv[0].data_ptr()


@needs_cpu
@pytest.mark.parametrize("use_triton", [False, True])
def test_fused_forward_equals_modular(tiny_llama, use_triton):
    """One decode step of 4 rows (3 paths sharing a prompt + 1 other request) through both forwards."""
    from parathinker.engine.block_manager import PagePool
    from parathinker.engine.plan import Chunk

    model = load_model(tiny_llama)
    cfg = model.config
    cache = torch.zeros(cfg.num_layers, 2, 64 * 4, cfg.num_kv_heads, cfg.head_dim)
    cache.normal_(generator=torch.Generator().manual_seed(4))
    pool = PagePool(64, 4)
    pool.admit(0, 60)
    prompt, other = pool.new_run(), pool.new_run()
    pool.extend(prompt, 9, 0)
    pool.extend(other, 6, 0)
    chunks = []
    for i in range(4):
        own = pool.new_run()
        pool.extend(own, 3 + i, 0)
        reads = [prompt if i < 3 else other, own]
        chunks.append(Chunk([10 + i], [12 + i], [i + 1], [own.slot(own.length - 1)], reads, shared_prefix=True))
    ids, pos, seg = (torch.tensor([c.__dict__[f][0] for c in chunks]) for f in ("tokens", "positions", "segments"))
    c1, c2 = cache.clone(), cache.clone()
    modular = model.hidden(ids[:, None], pos[:, None], seg[:, None], PagedCascade.for_chunks(c1, chunks, "cpu"))[:, 0]
    fused = FusedDecoder(model, use_triton=use_triton).hidden(ids, pos, seg, PagedCascade.for_chunks(c2, chunks, "cpu"))
    torch.testing.assert_close(fused, modular, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c2, c1, rtol=1e-5, atol=1e-5)  # the same K/V written to the same slots


@needs_cpu
@pytest.mark.parametrize("attention", ["cascade", pytest.param("triton", marks=pytest.mark.slow)])  # interpreter: ~12 s
def test_engine_with_and_without_fused_decode(tiny_qwen2, attention):
    """Scores and sampled generations agree (the fused step is the default; off is the modular forward)."""
    cache = CacheConfig(kv_cache_memory=0.05, page_size=4)
    on = LLM(tiny_qwen2, cache=cache, decode=DecodeConfig(attention=attention, fused_decode=True))
    off = LLM(tiny_qwen2, cache=cache, decode=DecodeConfig(attention=attention, fused_decode=False))
    assert on.engine.runner.fused is not None and off.engine.runner.fused is None
    rng = random.Random(6)
    prompt = [rng.randrange(4, 50) for _ in range(7)]
    paths = [[rng.randrange(4, 50) for _ in range(rng.randrange(2, 7))] for _ in range(3)]
    a, b = on.score(prompt, paths, [5, 6, 7]), off.score(prompt, paths, [5, 6, 7])
    diffs = [abs(x - y) for x, y in zip(a.token_logprobs, b.token_logprobs) if x == x]
    assert max(diffs) <= 1e-4
    pp = ParallelParams(num_paths=3, max_path_tokens=6, summary_max_tokens=4)
    sp = SamplingParams(temperature=1.0, seed=11)
    ga = on.generate([prompt], pp, sp)[0]
    gb = off.generate([prompt], pp, sp)[0]
    assert [p.token_ids for p in ga.paths] == [p.token_ids for p in gb.paths]
    assert ga.summary.token_ids == gb.summary.token_ids


@needs_cpu
def test_fused_step_that_fails_falls_back_to_the_modular_step(tiny_qwen2, monkeypatch):
    """A fused kernel that cannot run (say, does not compile on this GPU): warned, recorded, modular step, same result."""
    cache = CacheConfig(kv_cache_memory=0.05, page_size=4)
    ok = LLM(tiny_qwen2, cache=cache, decode=DecodeConfig(attention="triton", fused_decode=False))
    llm = LLM(tiny_qwen2, cache=cache, decode=DecodeConfig(attention="triton", fused_decode=True))

    def broken(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("no kernel for you")

    monkeypatch.setattr(kernels, "silu_mul", broken)
    pp = ParallelParams(num_paths=2, max_path_tokens=4, summary_max_tokens=2)
    sp = SamplingParams(temperature=0.0)
    a, b = llm.generate([[5, 6, 7]], pp, sp)[0], ok.generate([[5, 6, 7]], pp, sp)[0]
    assert [p.token_ids for p in a.paths] == [p.token_ids for p in b.paths]
    dec = llm.engine.runner.decoder
    assert dec.fused is None and "no kernel for you" in dec.fused_error
