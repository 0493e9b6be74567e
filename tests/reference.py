"""An independent brute-force ParaThinker forward, written from the method's text alone.

It shares no code with parathinker: weights straight from safetensors, RoPE tables from
transformers' own rotary classes, the two-phase mask built by explicit loops over token kinds,
attention as an explicit softmax per head.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file

PROMPT, SUMMARY = "prompt", "summary"


def two_phase_mask(kinds: list) -> torch.Tensor:
    """kinds: "prompt", "summary" or a path label per token. True = may attend."""
    n = len(kinds)
    m = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for k in range(q + 1):
            m[q, k] = kinds[k] == PROMPT or kinds[q] == SUMMARY or kinds[k] == kinds[q]
    return m


def _rope_tables(ckpt: Path, positions: torch.Tensor):
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    cfg = AutoConfig.from_pretrained(str(ckpt))
    cls = Qwen2RotaryEmbedding if cfg.model_type == "qwen2" else LlamaRotaryEmbedding
    rope = cls(cfg)
    cos, sin = rope(torch.zeros(1, dtype=torch.float32), positions[None])
    return cos[0], sin[0]  # (T, hd)


def reference_logprobs(ckpt: Path, ids: list[int], positions: list[int], segments: list[int], kinds: list) -> torch.Tensor:
    """(T, V) log-softmax of the logits at every token of the packed sequence."""
    cfg = json.loads((ckpt / "config.json").read_text())
    W = load_file(str(ckpt / "model.safetensors"))
    W = {k: v.float() for k, v in W.items()}
    H, KVH = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D = cfg["hidden_size"]
    hd = cfg.get("head_dim") or D // H
    eps = cfg["rms_norm_eps"]
    T = len(ids)
    cos, sin = _rope_tables(ckpt, torch.tensor(positions))
    mask = two_phase_mask(kinds)
    seg = torch.tensor(segments)

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def lin(x, name):
        y = x @ W[name + ".weight"].T
        return y + W[name + ".bias"] if name + ".bias" in W else y

    def rot(x):  # (T, heads, hd)
        half = hd // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos[:, None, :] + rotated * sin[:, None, :]

    x = W["model.embed_tokens.weight"][torch.tensor(ids)]
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        h = rms(x, W[p + "input_layernorm.weight"])
        q = lin(h, p + "self_attn.q_proj").view(T, H, hd)
        k = lin(h, p + "self_attn.k_proj").view(T, KVH, hd)
        v = lin(h, p + "self_attn.v_proj").view(T, KVH, hd)
        table = W.get(p + "self_attn.seg_embeddings.weight")
        if table is not None:
            k = k + table[seg][:, None, :]
            v = v + table[seg][:, None, :]
        q, k = rot(q), rot(k)
        out = torch.zeros(T, H, hd)
        for head in range(H):
            kv = head // (H // KVH)
            scores = q[:, head] @ k[:, kv].T / math.sqrt(hd)
            scores = scores.masked_fill(~mask, float("-inf"))
            out[:, head] = torch.softmax(scores, -1) @ v[:, kv]
        x = x + lin(out.reshape(T, H * hd), p + "self_attn.o_proj")
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        x = x + lin(torch.nn.functional.silu(lin(h, p + "mlp.gate_proj")) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = rms(x, W["model.norm.weight"])
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return torch.log_softmax(x @ head.T, -1)


def packed_by_hand(prompt: list[int], paths: list[list[int]], summary: list[int], think_open, think_close, s_open, s_close):
    """The ParaThinker layout written out from the method text: ids, positions, segments, kinds."""
    L = len(prompt)
    ids, pos, seg, kinds = list(prompt), list(range(L)), [0] * L, [PROMPT] * L
    full = [[think_open[i], *p, think_close[i]] for i, p in enumerate(paths)]
    for i, p in enumerate(full):
        ids += p
        pos += [L + t for t in range(len(p))]
        seg += [i + 1] * len(p)
        kinds += [f"path{i + 1}"] * len(p)
    s = [s_open, *summary, s_close]
    start = L + max(len(p) for p in full)
    ids += s
    pos += [start + t for t in range(len(s))]
    seg += [0] * len(s)
    kinds += [SUMMARY] * len(s)
    return ids, pos, seg, kinds
