"""The model as the trainer runs it: the attention choice and the loss inside ``forward``.

``TrainingModel`` is ``ParaThinkerForCausalLM`` (same modules, same state dict, same checkpoints)
whose ``forward`` also takes the batch's ``kinds``, ``labels`` and Trainer's
``num_items_in_batch`` and returns the loss. Keeping mask building and loss inside ``forward``
means DDP, FSDP and DeepSpeed see one ordinary forward call, and the two big tensors of the
plain dense path never exist at long context:

- attention (``attn_impl``): ``"dense"`` builds the ``[B, 1, T, T]`` additive mask from ``kinds``
  on the device (SDPA; CPU default); ``"flex"`` builds a FlexAttention ``BlockMask`` from the same
  kinds (``collate.batch_block_mask``; no T x T tensor, hidden blocks skipped; CUDA default);
- loss (``loss_chunk_size``): cross entropy from the final hidden states, only at label
  positions, ``loss_chunk_size`` tokens at a time, each chunk's LM head + CE under
  ``torch.utils.checkpoint`` so at most one chunk's logits exist in the forward and in the
  backward; 0 computes full ``[B, T, V]`` logits as before. Both are the summed CE over label
  tokens divided by ``num_items_in_batch`` (``loss.token_ce``), equal up to float summation order.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from ..model.attention import Attention, DenseAttention, FlexAttention
from ..model.config import ModelConfig
from ..model.model import ParaThinkerForCausalLM
from .collate import batch_bias, batch_block_mask
from .loss import chunked_token_ce, token_ce

AttnImpl = Literal["auto", "dense", "flex"]


def resolve_attn_impl(impl: str, device: torch.device | str) -> str:
    """``auto`` -> flex on CUDA, dense elsewhere."""
    if impl == "auto":
        return "flex" if torch.device(device).type == "cuda" else "dense"
    if impl not in ("dense", "flex"):
        raise ValueError(f"attn_impl must be auto, dense or flex, got {impl!r}")
    return impl


def batch_attention(kinds: torch.Tensor, impl: str, *, compile: bool | None = None) -> Attention:  # noqa: A002
    """The attention object for a padded batch with per-token ``kinds`` ([B, T], on the model's device)."""
    if resolve_attn_impl(impl, kinds.device) == "flex":
        return FlexAttention(batch_block_mask(kinds), compile=compile)
    return DenseAttention(batch_bias(kinds))


class TrainerModelConfig(ModelConfig):
    """``ModelConfig`` that also takes the run-time attributes transformers' Trainer writes.

    The shape fields stay frozen (a frozen dataclass refuses only its own fields on a subclass);
    ``use_cache`` and the like become plain attributes. Still a ``ModelConfig`` everywhere.
    """

    use_cache: bool = False

    @classmethod
    def of(cls, cfg: ModelConfig) -> TrainerModelConfig:
        if isinstance(cfg, cls):
            return cfg
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(ModelConfig)})


class TrainingModel(ParaThinkerForCausalLM):
    """``ParaThinkerForCausalLM`` whose forward computes the training loss (module docstring)."""

    accepts_loss_kwargs = True  # Trainer passes num_items_in_batch and scales for token averaging
    attn_impl: str = "auto"
    loss_chunk_size: int = 2048
    compile_attention: bool | None = None

    @classmethod
    def from_model(
        cls,
        model: ParaThinkerForCausalLM,
        *,
        attn_impl: str = "auto",
        loss_chunk_size: int = 2048,
        compile_attention: bool | None = None,
    ) -> TrainingModel:
        """Turn a loaded model into a ``TrainingModel`` in place (same parameters, same state dict)."""
        if loss_chunk_size < 0:
            raise ValueError(f"loss_chunk_size must be >= 0, got {loss_chunk_size}")
        resolve_attn_impl(attn_impl, "cpu")  # validates the name
        model.__class__ = cls
        model.config = TrainerModelConfig.of(model.config)
        model.attn_impl, model.loss_chunk_size, model.compile_attention = attn_impl, loss_chunk_size, compile_attention
        return model  # type: ignore[return-value]

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
        kinds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        **_: object,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Without ``labels``: float32 logits, as ``ParaThinkerForCausalLM``. With: ``{"loss": loss}``."""
        if kinds is None and labels is None:
            return super().forward(input_ids, positions, segment_ids, attn_bias)
        if positions is None:
            raise ValueError("TrainingModel.forward needs positions with kinds/labels")
        if attn_bias is not None:
            attn: Attention = DenseAttention(attn_bias)
        elif kinds is not None:
            attn = batch_attention(kinds, self.attn_impl, compile=self.compile_attention)
        else:
            raise ValueError("TrainingModel.forward needs kinds (or attn_bias) to build the mask")
        hidden = self.hidden(input_ids, positions, segment_ids, attn)
        if labels is None:
            return self.logits(hidden)
        if self.loss_chunk_size > 0:
            loss = chunked_token_ce(self.lm_head, hidden, labels, num_items_in_batch, self.loss_chunk_size)
        else:
            loss = token_ce(self.logits(hidden), labels, num_items_in_batch)
        return {"loss": loss}
