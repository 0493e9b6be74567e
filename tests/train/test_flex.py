"""FlexAttention block-mask path vs the dense-mask path: the same mask, the same logits and gradients.

On CPU (torch 2.13) flex_attention runs forward only, eagerly (unfused: it materialises the
scores, so no memory win, but exact) or compiled (slow to compile: marked slow); its backward
raises "FlexAttention does not support backward on CPU", so the gradient and long-context
tests are ``gpu`` tests, and the trainer refuses ``--attn-impl flex`` on CPU.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch

from parathinker.layout import LayoutConfig, pack
from parathinker.model import load_model
from parathinker.model.attention import DenseAttention, FlexAttention
from parathinker.tokens import ControlTokens
from parathinker.train.collate import (
    PAD_KIND,
    Collator,
    _visible,
    batch_bias,
    batch_block_mask,
    batch_visibility,
)
from parathinker.train.modeling import TrainingModel, batch_attention, resolve_attn_impl

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def needs_cuda(f):  # noqa: ANN001, ANN201
    """A ``gpu`` test (deselected by default), skipped where there is no CUDA device."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(f))


@pytest.fixture(scope="module")
def model_and_tokens(prepared_qwen):
    import transformers

    from parathinker.train.prepare import quiet_transformers

    torch.manual_seed(0)
    m = load_model(prepared_qwen, dtype=torch.float32)
    with torch.no_grad():  # non-zero thought embeddings, so a path mix-up would show
        for layer in m.model.layers:
            layer.self_attn.seg_embeddings.weight.normal_(0, 0.5)
    with quiet_transformers():
        tok = transformers.AutoTokenizer.from_pretrained(str(prepared_qwen))
    return m, ControlTokens.from_tokenizer(tok)


def _batch(ctok: ControlTokens, num_paths: list[int], seed: int = 0, layout: LayoutConfig | None = None) -> dict:
    """Packed examples with the given path counts, unequal path lengths, right-padded into one batch."""
    rng = random.Random(seed)
    ids = lambda n: [rng.randrange(10, 300) for _ in range(n)]  # noqa: E731
    feats = []
    for p in num_paths:
        idx = sorted(rng.sample(range(1, ctok.max_paths + 1), p))
        seq = pack(ids(rng.randint(3, 30)), [ids(rng.randint(1, 40)) for _ in range(p)], ids(rng.randint(2, 25)), ctok,
                   think_indices=idx, config=layout or LayoutConfig())
        feats.append({"input_ids": seq.input_ids, "positions": seq.positions, "segment_ids": seq.segment_ids,
                      "labels": seq.labels, "kinds": seq.kinds})
    return Collator(pad_id=0, dense_mask=False)(feats)


def _kinds(prompt: int, paths: list[int], summary: int, pad: int) -> list[int]:
    k = [0] * prompt
    for i, n in enumerate(paths):
        k += [i + 1] * n
    return k + [-1] * summary + [PAD_KIND] * pad


@pytest.mark.parametrize("block_size", [16, 128])
def test_block_mask_equals_create_block_mask_and_dense_visibility(block_size):
    from torch.nn.attention.flex_attention import create_block_mask

    kinds = torch.tensor([_kinds(70, [50, 200, 33], 40, 0), _kinds(20, [300], 30, 43), _kinds(5, [9] * 8, 7, 309)])
    B, T = kinds.shape
    ours = batch_block_mask(kinds, block_size=block_size, rows_per_chunk=48)
    nb = -(-T // block_size)
    padded = torch.full((B, nb * block_size), PAD_KIND)
    padded[:, :T] = kinds

    def mask_mod(b, h, q, kv):  # noqa: ANN001, ANN202
        return _visible(q, kv, padded[b, q], padded[b, kv])

    ref = create_block_mask(mask_mod, B, None, T, T, device="cpu", BLOCK_SIZE=block_size)
    for name in ("kv_num_blocks", "full_kv_num_blocks", "q_num_blocks", "full_q_num_blocks"):
        assert torch.equal(getattr(ours, name), getattr(ref, name)), name
    for name in ("kv_indices", "full_kv_indices", "q_indices", "full_q_indices"):
        n = getattr(ours, name.replace("indices", "num_blocks"))
        a, r = getattr(ours, name), getattr(ref, name)
        for b in range(B):
            for i in range(a.shape[2]):
                assert torch.equal(a[b, 0, i, : n[b, 0, i]], r[b, 0, i, : n[b, 0, i]]), (name, b, i)
    # token level: the block mask (blocks + mask_mod) is exactly batch_visibility
    q = torch.arange(T)
    dense = batch_visibility(kinds)
    for b in range(B):
        blocks = ours.to_dense()[b, 0].repeat_interleave(block_size, 0).repeat_interleave(block_size, 1)[:T, :T].bool()
        tok = blocks & ours.mask_mod(torch.tensor(b), torch.tensor(0), q[:, None], q[None, :])
        assert torch.equal(tok, dense[b]), b


@pytest.mark.parametrize("block_size", [16, 128])
def test_flex_logits_equal_dense(model_and_tokens, block_size):
    """P in {1, 3, 8}, unequal lengths, padding in the batch: fp32 logits agree to 1e-5 everywhere."""
    model, ctok = model_and_tokens
    worst = 0.0
    for layout in (LayoutConfig(), LayoutConfig(flat_positions=True)):
        batch = _batch(ctok, [1, 3, 8], seed=block_size, layout=layout)
        assert (batch["kinds"] == PAD_KIND).any(-1).sum() == 2  # two of three examples are padded
        args = (batch["input_ids"], batch["positions"], batch["segment_ids"])
        with torch.no_grad():
            dense = model.logits(model.hidden(*args, DenseAttention(batch_bias(batch["kinds"]))))
            bm = batch_block_mask(batch["kinds"], block_size=block_size)
            flex = model.logits(model.hidden(*args, FlexAttention(bm, compile=False)))
            plain = model(*args, attn_bias=batch_bias(batch["kinds"]))  # the model's own dense entry
        assert torch.equal(dense, plain)
        worst = max(worst, (dense - flex).abs().max().item())
    print(f"block {block_size}: max |flex - dense| logit diff {worst:.2e}")
    assert worst <= 1e-5, worst


def test_flex_has_no_cpu_backward_in_this_torch(model_and_tokens):
    """Documents why the gradient tests below need a GPU (fails, so gets noticed, once torch adds it)."""
    model, ctok = model_and_tokens
    batch = _batch(ctok, [2, 1], seed=3)
    with pytest.raises(NotImplementedError, match="backward on CPU"):
        model.hidden(batch["input_ids"], batch["positions"], batch["segment_ids"],
                     FlexAttention(batch_block_mask(batch["kinds"]), compile=False))


@needs_cuda
def test_flex_gradients_equal_dense_on_gpu(model_and_tokens):
    """The training forward (TrainingModel, chunked loss) with flex (compiled) vs dense: same loss and gradients (fp32)."""
    model, ctok = model_and_tokens
    batch = {k: v.cuda() for k, v in _batch(ctok, [2, 8, 1], seed=7).items()}
    results = {}
    for impl in ("dense", "flex"):
        m = TrainingModel.from_model(copy.deepcopy(model).cuda(), attn_impl=impl, loss_chunk_size=64)
        m.train()
        out = m(batch["input_ids"], batch["positions"], batch["segment_ids"], kinds=batch["kinds"],
                labels=batch["labels"])
        out["loss"].backward()
        results[impl] = (out["loss"].detach(), {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
    (ld, gd), (lf, gf) = results["dense"], results["flex"]
    torch.testing.assert_close(lf, ld, rtol=1e-5, atol=1e-5)
    assert gd.keys() == gf.keys() and any("seg_embeddings" in k for k in gd)
    worst = max(((gd[k] - gf[k]).abs().max() / gd[k].abs().max().clamp(min=1e-12)).item() for k in gd)
    print(f"flex vs dense (cuda): loss {ld.item():.6f} / {lf.item():.6f}, worst relative grad diff {worst:.2e}")
    assert worst <= 1e-3, worst  # GPU fp32 matmuls may use TF32-free but reordered reductions


@needs_cuda
def test_flex_long_context_memory_on_gpu():
    """T = 16K, P = 8, bf16, forward + backward of one attention call: flex needs no T x T tensor."""
    B, H, KVH, hd, T = 1, 12, 2, 128, 16384
    L, S = 512, 512
    path = (T - L - S) // 8
    kinds = torch.tensor([_kinds(L, [path] * 8, T - L - 8 * path, 0)], device="cuda")
    q = torch.randn(B, T, H, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, T, KVH, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, T, KVH, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    stats = {}
    for name in ("flex", "dense"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        attn = batch_attention(kinds, name)
        out = attn(0, q, k, v)
        out.float().square().mean().backward()
        torch.cuda.synchronize()
        stats[name] = ((torch.cuda.max_memory_allocated() - base) / 2**30, out.detach())
        q.grad = k.grad = v.grad = None
        del attn, out
    diff = (stats["flex"][1].float() - stats["dense"][1].float()).abs().max().item()
    print(f"T={T}: peak extra GiB flex {stats['flex'][0]:.2f} vs dense {stats['dense'][0]:.2f}; max |diff| {diff:.3f}")
    assert stats["flex"][0] < stats["dense"][0] / 2 and diff < 0.05


def test_attn_impl_resolution():
    assert resolve_attn_impl("auto", "cpu") == "dense" and resolve_attn_impl("auto", "cuda") == "flex"
    assert resolve_attn_impl("flex", "cpu") == "flex"
    with pytest.raises(ValueError, match="auto, dense or flex"):
        resolve_attn_impl("sdpa", "cpu")
    kinds = torch.tensor([_kinds(3, [2, 2], 2, 1)])
    assert isinstance(batch_attention(kinds, "auto"), DenseAttention)
    assert isinstance(batch_attention(kinds, "flex"), FlexAttention)


@pytest.mark.slow
def test_compiled_flex_on_cpu_equals_dense(model_and_tokens):
    """torch.compile(flex_attention) on CPU (inductor C++), forward, two sequence lengths."""
    model, ctok = model_and_tokens
    for seed, counts in ((1, [3, 1]), (2, [8, 2, 5])):
        batch = _batch(ctok, counts, seed=seed)
        args = (batch["input_ids"], batch["positions"], batch["segment_ids"])
        with torch.no_grad():
            dense = model.logits(model.hidden(*args, DenseAttention(batch_bias(batch["kinds"]))))
            flex = model.logits(model.hidden(*args, FlexAttention(batch_block_mask(batch["kinds"]), compile=True)))
        torch.testing.assert_close(flex, dense, rtol=1e-5, atol=1e-5)
