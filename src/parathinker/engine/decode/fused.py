"""The decode step's forward with fused projections and kernels (one new token per row).

The same model as ``ParaThinkerForCausalLM.hidden`` (tested equal), laid out for decode: per layer

    add_rmsnorm -> qkv GEMM -> rope_write (RoPE, thought embeddings, K/V store) -> attention
    -> o_proj GEMM -> add_rmsnorm -> gate|up GEMM -> silu_mul -> down GEMM

about ten launches where the modular forward makes ~50 (see ``kernels``). On CUDA the elementwise
ops are Triton kernels; elsewhere their torch twins, so the CPU still gets the fused GEMMs.
Attention backends take the already written K/V through ``attend(layer, q)``. On the CPU the four
GEMMs per layer and the LM head can run over oneDNN-packed weights (``cpu_gemm``).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ...model import ParaThinkerForCausalLM
from ..attention.base import DecodeAttention
from .cpu_gemm import Linear, PackedLinear, dense, packing_problem

log = logging.getLogger(__name__)


def _params(*linears: nn.Linear) -> list[torch.Tensor]:
    return [t for lin in linears for t in (lin.weight, lin.bias) if t is not None]


def _gemm(lin: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
    return lin.weight, lin.bias, _params(lin)


class FusedDecoder:
    def __init__(self, model: ParaThinkerForCausalLM, use_triton: bool, pack: bool = False):
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
        # per layer (qkv, o, gate_up, down), then the LM head, as (weight, bias, the parameters they come
        # from); packed for oneDNN on the CPU when asked and it pays
        gemms = [[(*a.qkv, _params(a.q_proj, a.k_proj, a.v_proj)), _gemm(a.o_proj),
                  (*m.gate_up, _params(m.gate_proj, m.up_proj)), _gemm(m.down_proj)]
                 for a, m in ((layer.self_attn, layer.mlp) for layer in model.model.layers)]
        head = _gemm(model.lm_head)
        everything = [w for layer in gemms for w, _, _ in layer] + [head[0]]
        self.pack_problem = packing_problem(everything) if pack else None  # why asked but not packed
        self.packed = pack and self.pack_problem is None
        make = PackedLinear if self.packed else dense
        built = [tuple(make(*g) for g in layer) for layer in gemms]
        self.head = make(*head)
        # the step checks the packed copies for staleness once (``_refresh``), then calls them unchecked
        self._packed = [lin for layer in built for lin in layer if isinstance(lin, PackedLinear)]
        self._versioned = [t for lin in self._packed for t in lin.sources if not t.is_inference()]
        self._stamp = self._versions()
        self.linears: list[tuple[Linear, ...]] = [
            tuple(lin.run if isinstance(lin, PackedLinear) else lin for lin in layer) for layer in built]
        # what each layer reads besides its GEMMs, looked up once (module attribute access costs per step)
        self.layers = [(n1.weight, n1.eps, n2.weight, n2.eps, a.seg_embeddings.weight if a.seg_embeddings is not None else None)
                       for n1, n2, a in ((x.input_layernorm, x.post_attention_layernorm, x.self_attn)
                                         for x in model.model.layers)]
        if self.pack_problem:
            log.info("decode GEMMs stay unpacked: %s", self.pack_problem)

    def _versions(self) -> tuple[int, ...]:
        return tuple(t._version for t in self._versioned)

    def _refresh(self) -> None:
        """Re-pack the GEMMs whose source parameters were edited in place since they were packed."""
        stamp = self._versions()
        if stamp != self._stamp:
            for lin in self._packed:
                lin.refresh()
            self._stamp = stamp

    @torch.inference_mode()
    def hidden(self, ids: torch.Tensor, pos: torch.Tensor, seg: torch.Tensor, attn: DecodeAttention) -> torch.Tensor:
        """Final normed hidden states (B, D) of one token per row; ids/pos/seg (B,) or (B, 1)."""
        m, tri, kernels = self.model.model, self.use_triton, self.k
        if self._packed:
            self._refresh()
        x = m.embed_tokens(ids.reshape(-1))
        tables = kernels.rope_tables(pos, self.inv_freq, self.scaling)  # once per step, for every layer
        rotation = None if tri else kernels.rope_rotation(tables, x.dtype)
        residual = None
        for i, (in_w, in_eps, post_w, post_eps, seg_table) in enumerate(self.layers):
            h, residual = kernels.add_rmsnorm(x, residual, in_w, in_eps, tri)
            qkv_proj, o_proj, gate_up_proj, down_proj = self.linears[i]
            q = kernels.rope_write(qkv_proj(h), seg, seg_table, attn.cache[i], attn.slot_mapping, self.heads,
                                   self.kv_heads, tables, tri, rotation)
            o = attn.attend(i, q)  # (B, H, hd)
            x = o_proj(o.reshape(o.shape[0], -1))
            h, residual = kernels.add_rmsnorm(x, residual, post_w, post_eps, tri)
            x = down_proj(kernels.silu_mul(gate_up_proj(h), tri))
        h, _ = kernels.add_rmsnorm(x, residual, m.norm.weight, m.norm.eps, tri)
        return h

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head (``ParaThinkerForCausalLM.logits``) over the same weights as the step's GEMMs: float32."""
        return self.head(hidden).float()
