"""Chunked loss from hidden states == the full-logits loss: same value, same gradients (fp32)."""

from __future__ import annotations

import copy

import pytest
import torch

from parathinker.layout import IGNORE_INDEX
from parathinker.model import load_model
from parathinker.train.collate import batch_bias
from parathinker.train.loss import chunked_token_ce, token_ce
from parathinker.train.modeling import TrainerModelConfig, TrainingModel


def _grads(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("chunk", [1, 7, 4096])
@pytest.mark.parametrize("n_items", [None, 50])
def test_chunked_equals_full_on_random_tensors(chunk, n_items):
    torch.manual_seed(chunk)
    B, T, D, V = 3, 29, 16, 41
    labels = torch.randint(0, V, (B, T))
    labels[torch.rand(B, T) < 0.4] = IGNORE_INDEX
    labels[2] = IGNORE_INDEX  # a row without labels
    head = torch.nn.Linear(D, V, bias=False)
    h0 = torch.randn(B, T, D)
    out = {}
    for name in ("full", "chunked"):
        head.zero_grad()
        h = h0.clone().requires_grad_(True)
        if name == "full":
            loss = token_ce(head(h).float(), labels, n_items)
        else:
            loss = chunked_token_ce(head, h, labels, n_items, chunk_size=chunk)
        loss.backward()
        out[name] = (loss.detach(), h.grad.clone(), head.weight.grad.clone())
    torch.testing.assert_close(out["chunked"][0], out["full"][0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["chunked"][1], out["full"][1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["chunked"][2], out["full"][2], rtol=1e-5, atol=1e-7)
    assert out["chunked"][1][2].abs().sum() == 0  # no label, no gradient


def test_chunked_without_labels_is_a_differentiable_zero():
    head = torch.nn.Linear(4, 5)
    h = torch.randn(2, 3, 4, requires_grad=True)
    loss = chunked_token_ce(head, h, torch.full((2, 3), IGNORE_INDEX), None, 2)
    loss.backward()
    assert loss.item() == 0.0 and h.grad.abs().sum() == 0
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_token_ce(head, h, torch.zeros(2, 3, dtype=torch.long), None, 0)


@pytest.fixture(scope="module")
def batch(prepared_qwen):
    import transformers

    from parathinker.prompting import PromptStyle
    from parathinker.tokens import ControlTokens
    from parathinker.train.collate import Collator, MultiPathDataset, PackConfig, encode_records
    from parathinker.train.data import Record
    from parathinker.train.prepare import quiet_transformers

    from .conftest import toy_records

    with quiet_transformers():
        tok = transformers.AutoTokenizer.from_pretrained(str(prepared_qwen))
    recs = [Record(r["id"], tuple(r["paths"]), r["summary"], r.get("prompt"),
                   tuple(r["messages"]) if "messages" in r else None, r["answer"]) for r in toy_records(4)]
    ds = MultiPathDataset(encode_records(recs, tok, PromptStyle()), ControlTokens.from_tokenizer(tok),
                          PackConfig(max_length=4096), seed=1)
    b = Collator(pad_id=tok.pad_token_id, dense_mask=False)([ds[i] for i in range(4)])
    b.pop("stats")
    return b


def test_training_model_chunked_loss_equals_full_logits_loss(prepared_qwen, batch):
    """Tiny model, gradient checkpointing on: the loss and every parameter gradient match chunk size 0 (full logits)."""
    base = load_model(prepared_qwen, dtype=torch.float32)
    with torch.no_grad():
        for layer in base.model.layers:
            layer.self_attn.seg_embeddings.weight.normal_(0, 0.3)
    n_items = int(batch["labels"].ne(IGNORE_INDEX).sum()) + 17  # as if other micro-batches of the step had labels
    results = {}
    for chunk in (0, 5, 64, 100000):
        m = TrainingModel.from_model(copy.deepcopy(base), attn_impl="dense", loss_chunk_size=chunk)
        m.gradient_checkpointing_enable()
        m.train()
        out = m(**batch, num_items_in_batch=n_items)
        out["loss"].backward()
        results[chunk] = (out["loss"].detach(), {k: p.grad for k, p in m.named_parameters()})
    ref_loss, ref_grads = results[0]
    # the reference is the trainer's old computation: the model's logits, then token_ce
    with torch.no_grad():
        logits = base(batch["input_ids"], batch["positions"], batch["segment_ids"],
                      attn_bias=batch_bias(batch["kinds"]))
        torch.testing.assert_close(token_ce(logits, batch["labels"], n_items), ref_loss, rtol=0, atol=0)
    for chunk, (loss, grads) in results.items():
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-7)
        worst = max(((grads[k] - ref_grads[k]).abs().max() / ref_grads[k].abs().max().clamp(min=1e-12)).item()
                    for k in ref_grads)
        print(f"chunk {chunk}: loss {loss.item():.7f} vs {ref_loss.item():.7f}, worst relative grad diff {worst:.1e}")
        assert worst <= 1e-5, (chunk, worst)


def test_training_model_is_the_same_model(prepared_qwen, batch):
    """from_model keeps parameters, state dict and logits; the config takes Trainer's use_cache, shape stays frozen."""
    import dataclasses

    base = load_model(prepared_qwen, dtype=torch.float32)
    keys = list(base.state_dict())
    with torch.no_grad():
        ref = base(batch["input_ids"], batch["positions"], batch["segment_ids"])
    m = TrainingModel.from_model(base)
    assert list(m.state_dict()) == keys and isinstance(m.config, TrainerModelConfig)
    m.config.use_cache = False  # what transformers' Trainer does
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.config.hidden_size = 3
    with torch.no_grad():
        torch.testing.assert_close(m(batch["input_ids"], batch["positions"], batch["segment_ids"]), ref, rtol=0, atol=0)
        logits = m(batch["input_ids"], batch["positions"], batch["segment_ids"], kinds=batch["kinds"])
    assert logits.shape == ref.shape
