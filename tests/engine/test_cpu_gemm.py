"""oneDNN-packed CPU GEMMs (``engine.decode.cpu_gemm``): the same products as ``F.linear``, never stale, and
skipped with a reason where they cannot run or would not fit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from parathinker import LLM, CacheConfig, DecodeConfig, ParallelParams, SamplingParams
from parathinker.engine.decode import cpu_gemm
from parathinker.engine.decode.cpu_gemm import PackedLinear, packing_problem
from parathinker.engine.decode.fused import FusedDecoder
from parathinker.model import load_model

KW = dict(kv_cache_memory=0.05, page_size=4)


def _packable(dtype: torch.dtype) -> None:
    problem = cpu_gemm._self_check(torch.zeros(8, 8, dtype=dtype))
    if problem:
        pytest.skip(problem)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_equals_f_linear(dtype, bias):
    _packable(dtype)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 40, generator=g).to(dtype)
    b = torch.randn(96, generator=g).to(dtype) if bias else None
    lin = PackedLinear(w, b)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for shape in [(1, 40), (3, 40), (8, 40), (33, 40), (2, 5, 40)]:  # any row count, and a batch of sequences
        x = torch.randn(shape, generator=g).to(dtype)
        torch.testing.assert_close(lin(x), F.linear(x, w, b), **tol)


def test_packed_copy_follows_in_place_edits():
    """Editing a source parameter in place (what load_state_dict does) re-packs before the next product."""
    _packable(torch.float32)
    src = torch.nn.Linear(16, 12)
    lin = PackedLinear(src.weight, src.bias)
    x = torch.randn(4, 16)
    with torch.no_grad():
        src.weight[3] *= -2
        src.bias.zero_()
    torch.testing.assert_close(lin(x), F.linear(x, src.weight, src.bias))


def _decode_step(model, fused: FusedDecoder | None) -> torch.Tensor:  # noqa: ANN001
    """One decode step of 3 rows (paths sharing a 5-token prompt) over a random cache: final hidden states,
    through ``fused`` or (None) the modular model."""
    from parathinker.engine.attention.cascade import PagedCascade
    from parathinker.engine.block_manager import PagePool
    from parathinker.engine.plan import Chunk

    cfg = model.config
    cache = torch.randn(cfg.num_layers, 2, 16 * 4, cfg.num_kv_heads, cfg.head_dim,
                        generator=torch.Generator().manual_seed(0))
    pool = PagePool(16, 4)
    pool.admit(0, 8)
    prompt = pool.new_run()
    pool.extend(prompt, 5, 0)
    chunks = []
    for i in range(3):
        own = pool.new_run()
        pool.extend(own, 2 + i, 0)
        chunks.append(Chunk([7 + i], [6 + i], [i + 1], [own.slot(own.length - 1)], [prompt, own], shared_prefix=True))
    ids, pos, seg = (torch.tensor([c.__dict__[f][0] for c in chunks]) for f in ("tokens", "positions", "segments"))
    attn = PagedCascade.for_chunks(cache, chunks, "cpu")
    if fused is None:
        return model.hidden(ids[:, None], pos[:, None], seg[:, None], attn)[:, 0]
    return fused.hidden(ids, pos, seg, attn)


def test_fused_decoder_packed_equals_dense_and_follows_edits(tiny_llama):
    """The packed step matches the modular model, also after weights are edited in place between steps:
    q_proj (a fused q|k|v source: the fused weight shares its storage but not its version counter), a
    down projection, and the LM head."""
    _packable(torch.float32)
    model = load_model(tiny_llama)
    fd = FusedDecoder(model, use_triton=False, pack=True)
    assert fd.packed and fd.pack_problem is None
    h = torch.randn(5, model.config.hidden_size)
    torch.testing.assert_close(fd.logits(h), model.logits(h), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_decode_step(model, fd), _decode_step(model, None), rtol=1e-5, atol=1e-5)
    layers = model.model.layers
    with torch.no_grad():
        layers[0].self_attn.q_proj.weight.mul_(3.0)
        layers[-1].mlp.down_proj.weight.mul_(-2.0)
        model.lm_head.weight.add_(0.5)
    torch.testing.assert_close(_decode_step(model, fd), _decode_step(model, None), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fd.logits(h), model.logits(h), rtol=1e-5, atol=1e-5)
    a = layers[0].self_attn
    assert torch.equal(a.qkv[0][: a.q_proj.weight.shape[0]], a.q_proj.weight)


def test_no_packing_when_the_copy_would_not_fit(monkeypatch):
    w = [torch.zeros(1024, 1024)]  # 4 MiB
    monkeypatch.setattr(cpu_gemm, "available_memory", lambda: 8 * 2**20)
    assert "more than 25% of the free" in packing_problem(w)
    monkeypatch.setattr(cpu_gemm, "available_memory", lambda: None)  # unknown: small copies only
    assert packing_problem(w) == cpu_gemm._self_check(w[0])
    big = torch.zeros(1, 1).expand(2**15, 2**13 + 1)  # 1 GiB as counted, no memory behind it
    assert "free memory is unknown" in packing_problem([big])


def test_no_packing_when_the_op_fails_or_disagrees(monkeypatch):
    w = torch.zeros(8, 8)

    def missing(self):  # noqa: ANN001, ANN202
        raise RuntimeError("no mkldnn here\nsecond line")

    with monkeypatch.context() as m:
        m.setattr(PackedLinear, "_pack", missing)
        assert packing_problem([w]) == "oneDNN packed GEMM unavailable (no mkldnn here)"
    _packable(torch.float32)
    monkeypatch.setattr(PackedLinear, "__call__", lambda self, x: F.linear(x, self.weight) + 1.0)
    assert packing_problem([w]).startswith("oneDNN packed GEMM disagrees with F.linear")


def test_engine_packs_on_the_cpu_by_default_and_gives_the_same_generations(tiny_qwen2):
    _packable(torch.float32)
    on = LLM(tiny_qwen2, cache=CacheConfig(**KW))
    off = LLM(tiny_qwen2, cache=CacheConfig(**KW), decode=DecodeConfig(packed_weights=False))
    assert on.engine.runner.fused.packed and not off.engine.runner.fused.packed
    pp = ParallelParams(num_paths=4, max_path_tokens=8, summary_max_tokens=4)
    sp = SamplingParams(temperature=1.0, seed=3)
    a, b = on.generate([[5, 6, 7, 8]], pp, sp)[0], off.generate([[5, 6, 7, 8]], pp, sp)[0]
    assert [p.token_ids for p in a.paths] == [p.token_ids for p in b.paths]
    assert a.summary.token_ids == b.summary.token_ids
