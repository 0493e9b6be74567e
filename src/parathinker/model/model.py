"""Qwen2 / Llama decoder with ParaThinker thought embeddings.

Module names follow Hugging Face, so checkpoints load by name. The one addition: per layer
``self_attn.seg_embeddings`` (max_segments x head_dim). For a token of segment j, T[j] is added
to its key *before* RoPE and to its value; queries are untouched:

    k' = RoPE_pos(k + T[j]),   v' = v + T[j]

Positions and segment ids are inputs (never derived from token order): ParaThinker paths
share a position range, so token order, cache slot and position are three different things.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention, DenseAttention
from .config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Rotary(nn.Module):
    """cos/sin tables from positions; frequencies (incl. llama3/yarn scaling) from transformers' own init."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        inv_freq, self.scaling = rotary_frequencies(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq  # (B, T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]  # (B, T, 1, hd)
        return (emb.cos() * self.scaling).to(dtype), (emb.sin() * self.scaling).to(dtype)


def rotary_frequencies(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (hd/2,) and the cos/sin scaling, always computed on the CPU in float32."""
    with torch.device("cpu"):  # also when the model is being built on the meta device
        return _rotary_frequencies(cfg)


def _rotary_frequencies(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    rope_type, base = cfg.rope()
    if rope_type == "default":
        dim = cfg.head_dim
        return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)), 1.0
    if rope_type == "dynamic":
        raise NotImplementedError("dynamic RoPE scaling is not supported")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](cfg.hf_config(), "cpu")
    return inv_freq.float(), float(scaling)


def _embedding(num: int, dim: int) -> nn.Embedding:
    """``nn.Embedding(num, dim)`` (same init, same random draws), but on the meta device (the loader)
    no init at all: torch's meta ``normal_`` imports torch._dynamo, 1.5 s of every start-up."""
    w = torch.empty(num, dim)
    if w.device.type != "meta":
        nn.init.normal_(w)
    return nn.Embedding(num, dim, _weight=w)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.h, self.kvh, self.hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.h * self.hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.kvh * self.hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.kvh * self.hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.h * self.hd, cfg.hidden_size, bias=cfg.o_bias)
        self.seg_embeddings = _embedding(cfg.max_segments, self.hd) if cfg.max_segments > 0 else None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        segment_ids: torch.Tensor | None,
        attn: Attention,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.h, self.hd)
        k = self.k_proj(x).view(B, T, self.kvh, self.hd)
        v = self.v_proj(x).view(B, T, self.kvh, self.hd)
        if self.seg_embeddings is not None and segment_ids is not None:
            t = self.seg_embeddings(segment_ids)[:, :, None, :].to(k.dtype)  # (B, T, 1, hd), shared by KV heads
            k = k + t
            v = v + t
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        out = attn(self.layer, q, k, v)  # (B, T, H, hd)
        return self.o_proj(out.reshape(B, T, self.h * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.self_attn = SelfAttention(cfg, layer)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, segment_ids, attn):  # noqa: ANN001 - hot path, shapes in Decoder.forward
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, segment_ids, attn)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = _embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.gradient_checkpointing = False

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        positions: torch.Tensor,  # (B, T)
        segment_ids: torch.Tensor | None,  # (B, T)
        attn: Attention,
        rotary: Rotary,
    ) -> torch.Tensor:  # (B, T, D)
        x = self.embed_tokens(input_ids)
        cos, sin = rotary(positions, x.dtype)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, segment_ids, attn, use_reentrant=False)
            else:
                x = layer(x, cos, sin, segment_ids, attn)
        return self.norm(x)


def _fuse(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    with torch.no_grad():
        w = torch.cat([lin.weight for lin in linears])
        b = torch.cat([lin.bias for lin in linears]) if linears[0].bias is not None else None
        start = 0
        for lin in linears:
            n = lin.weight.shape[0]
            lin.weight.data = w[start : start + n]
            if b is not None:
                lin.bias.data = b[start : start + n]
            start += n
    return w, b


def _fused_still(fused: tuple[torch.Tensor, torch.Tensor | None] | None, first: nn.Linear) -> bool:
    return fused is not None and first.weight.data_ptr() == fused[0].data_ptr() and first.weight.device == fused[0].device


class ParaThinkerForCausalLM(nn.Module):
    """Decoder + LM head. ``forward`` is the dense (training) entry; the engine calls ``hidden``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Decoder(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rotary = Rotary(cfg)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def hidden(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        segment_ids: torch.Tensor | None,
        attn: Attention,
    ) -> torch.Tensor:
        """Final hidden states (B, T, D) for tokens at the given positions/segments."""
        return self.model(input_ids, positions, segment_ids, attn, self.rotary)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        positions: torch.Tensor | None = None,  # (B, T); default 0..T-1
        segment_ids: torch.Tensor | None = None,  # (B, T); default none added
        attn_bias: torch.Tensor | None = None,  # (B, 1, T, T) additive float mask; default causal
    ) -> torch.Tensor:  # (B, T, V) float32 logits
        B, T = input_ids.shape
        if positions is None:
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
        if attn_bias is None:
            causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
            attn_bias = torch.zeros(T, T, device=input_ids.device).masked_fill(~causal, float("-inf"))
            attn_bias = attn_bias.expand(B, 1, T, T)
        return self.logits(self.hidden(input_ids, positions, segment_ids, DenseAttention(attn_bias)))

    def fuse_projections(self) -> None:
        """Make q|k|v and gate|up one weight each; the separate parameters become row views of it.

        For the engine's fused decode step (one GEMM each: ``self_attn.qkv``, ``mlp.gate_up``, as
        (weight, bias) pairs). No extra memory, and the modular forward, the parameter names and
        values are unchanged. Idempotent; fuses again if the parameters were moved since (``.to``).
        """
        for layer in self.model.layers:
            a, m = layer.self_attn, layer.mlp
            if not _fused_still(a.__dict__.get("qkv"), a.q_proj):
                a.qkv = _fuse([a.q_proj, a.k_proj, a.v_proj])
            if not _fused_still(m.__dict__.get("gate_up"), m.gate_proj):
                m.gate_up = _fuse([m.gate_proj, m.up_proj])

    def gradient_checkpointing_enable(self, **_: object) -> None:
        self.model.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.model.gradient_checkpointing = False

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype
