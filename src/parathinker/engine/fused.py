"""The decode step's forward with fused projections and kernels (one new token per row).

The same model as ``ParaThinkerForCausalLM.hidden`` (tested equal), laid out for decode: per layer

    add_rmsnorm -> qkv GEMM -> rope_write (RoPE, thought embeddings, K/V store) -> attention
    -> o_proj GEMM -> add_rmsnorm -> gate|up GEMM -> silu_mul -> down GEMM

about ten launches where the modular forward makes ~50 (see ``kernels``). On CUDA the elementwise
ops are Triton kernels; elsewhere their torch twins, so the CPU still gets the fused GEMMs.
Attention backends take the already written K/V through ``attend(layer, q)``.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from ..model import ParaThinkerForCausalLM


class DecodeAttention(Protocol):
    cache: torch.Tensor  # (layers, 2, slots, KVH, hd)
    slot_mapping: torch.Tensor  # (B,) where each row's new k', v' go

    def attend(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """q (B, H, hd), the rows' K/V already stored -> (B, H, hd)."""
        ...


class FusedDecoder:
    def __init__(self, model: ParaThinkerForCausalLM, use_triton: bool):
        # imported here, not at the top: Triton reads TRITON_INTERPRET when the kernels are defined,
        # and the engine module is imported before a test or script can set it
        from . import kernels

        self.k = kernels
        model.fuse_projections()
        cfg = model.config
        self.model = model
        self.use_triton = use_triton
        self.heads, self.kv_heads = cfg.num_heads, cfg.num_kv_heads
        self.inv_freq = model.rotary.inv_freq.float().contiguous()
        self.scaling = float(model.rotary.scaling)

    @torch.inference_mode()
    def hidden(self, ids: torch.Tensor, pos: torch.Tensor, seg: torch.Tensor, attn: DecodeAttention) -> torch.Tensor:
        """Final normed hidden states (B, D) of one token per row; ids/pos/seg (B,) or (B, 1)."""
        m, tri, kernels = self.model.model, self.use_triton, self.k
        x = m.embed_tokens(ids.reshape(-1))
        tables = kernels.rope_tables(pos, self.inv_freq, self.scaling)  # once per step, for every layer
        residual = None
        for i, layer in enumerate(m.layers):
            a, mlp = layer.self_attn, layer.mlp
            h, residual = kernels.add_rmsnorm(x, residual, layer.input_layernorm.weight,
                                              layer.input_layernorm.eps, tri)
            qkv = F.linear(h, *a.qkv)
            seg_table = a.seg_embeddings.weight if a.seg_embeddings is not None else None
            q = kernels.rope_write(qkv, seg, seg_table, attn.cache[i], attn.slot_mapping, self.heads, self.kv_heads,
                                   tables, tri)
            o = attn.attend(i, q)  # (B, H, hd)
            x = a.o_proj(o.reshape(o.shape[0], -1))
            h, residual = kernels.add_rmsnorm(x, residual, layer.post_attention_layernorm.weight,
                                              layer.post_attention_layernorm.eps, tri)
            x = mlp.down_proj(kernels.silu_mul(F.linear(h, *mlp.gate_up), tri))
        h, _ = kernels.add_rmsnorm(x, residual, m.norm.weight, m.norm.eps, tri)
        return h
