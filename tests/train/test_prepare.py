"""`prepare`: checked against stock transformers loading the output, not against our own loader."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from parathinker.errors import CheckpointError, ConfigError
from parathinker.tokens import ControlTokens, control_token_strings
from parathinker.train.prepare import SEG_KEY, prepare, quiet_transformers


def _load(d):
    with quiet_transformers():
        return transformers.AutoModelForCausalLM.from_pretrained(str(d)).eval(), transformers.AutoTokenizer.from_pretrained(str(d))


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_prepare_adds_tokens_once_and_keeps_base_behaviour(arch, qwen_base, llama_base, tmp_path):
    base = qwen_base if arch == "qwen2" else llama_base
    out = tmp_path / "out"
    r1 = prepare(base, out, num_paths=8)
    assert r1.added_tokens == control_token_strings(8)
    r2 = prepare(base, out, num_paths=8)  # same base again: same result
    r3 = prepare(out, out, num_paths=8)  # on its own output: nothing to add
    assert r2.added_tokens == r1.added_tokens and r3.added_tokens == []

    base_model, base_tok = _load(base)
    model, tok = _load(out)  # engine-independent: stock transformers loads the result
    assert len(tok) == len(base_tok) + 18
    ct = ControlTokens.from_tokenizer(tok)
    assert ct.max_paths == 8
    assert len(set(ct.all_ids)) == 18 and min(ct.all_ids) == len(base_tok)
    assert model.get_input_embeddings().weight.shape[0] >= len(tok)
    # special: never split, skipped when decoding
    ids = tok("<think3> two plus two </think3>", add_special_tokens=False).input_ids
    assert ids[0] == ct.think_open[2] and ids[-1] == ct.think_close[2]
    assert tok.decode(ids, skip_special_tokens=True).strip() == "two plus two"

    # zero thought embeddings + untouched old rows: same logits as the base on base tokens
    x = torch.tensor([base_tok("what is two plus three", add_special_tokens=False).input_ids])
    with torch.no_grad():
        a = base_model(x).logits[..., : len(base_tok)]
        b = model(x).logits[..., : len(base_tok)]
    torch.testing.assert_close(a, b, rtol=0, atol=0)

    # new rows start from related tokens, not noise
    vocab = tok.get_vocab()
    emb = model.get_input_embeddings().weight
    torch.testing.assert_close(emb[vocab["<think5>"]], emb[vocab["<think>"]])
    torch.testing.assert_close(emb[vocab["</think5>"]], emb[vocab["</think>"]])
    torch.testing.assert_close(emb[vocab["<summary>"]], emb[: len(base_tok)].mean(0), atol=1e-6, rtol=0)
    if arch == "llama":  # untied: output rows initialised too
        out_emb = model.get_output_embeddings().weight
        torch.testing.assert_close(out_emb[vocab["</think2>"]], out_emb[vocab["</think>"]])

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["max_segments"] == 32 and cfg["model_type"] == arch
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        for n in range(2):
            t = f.get_tensor(SEG_KEY.format(n))
            assert t.shape == (32, 16) and not t.any()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_rerun_keeps_trained_thought_embeddings(qwen_base, tmp_path):
    out = prepare(qwen_base, tmp_path / "a", num_paths=4, max_segments=12).output_dir
    state = load_file(str(out / "model.safetensors"))
    trained = torch.randn(12, 16)
    state[SEG_KEY.format(1)] = trained
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    r = prepare(out, tmp_path / "b", num_paths=8, max_segments=32)  # more paths: 12 rows still enough
    assert r.seg_source == "kept" and r.max_segments == 12
    assert r.added_tokens == control_token_strings(8)[8:16]  # <think5>..</think8> only
    got = load_file(str(tmp_path / "b" / "model.safetensors"))[SEG_KEY.format(1)]
    torch.testing.assert_close(got, trained)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["max_segments"] == 12
    with pytest.raises(CheckpointError, match="too few for 16 paths"):
        prepare(out, tmp_path / "c", num_paths=16, max_segments=32)
    assert not (tmp_path / "c").exists()


def test_random_seg_init_is_small(qwen_base, tmp_path):
    prepare(qwen_base, tmp_path / "o", seg_init_std=0.02, seed=1)
    t = load_file(str(tmp_path / "o" / "model.safetensors"))[SEG_KEY.format(0)]
    assert 0.01 < t.std().item() < 0.03


def test_errors_are_one_line_and_leave_nothing(qwen_base, tmp_path):
    with pytest.raises(CheckpointError, match="no such model directory"):
        prepare(tmp_path / "missing", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        prepare(tmp_path / "empty", tmp_path / "o")
    bad = tmp_path / "gpt"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="'gpt2' is not supported"):
        prepare(bad, tmp_path / "o")
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        prepare(bad, tmp_path / "o")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="cannot write the output"):
        prepare(qwen_base, blocker / "out")
    with pytest.raises(ConfigError, match="must exceed"):
        prepare(qwen_base, tmp_path / "o", num_paths=8, max_segments=8)
    assert not (tmp_path / "o").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
