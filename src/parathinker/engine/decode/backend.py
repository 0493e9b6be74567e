"""The decode-step interface the runner calls, its three backends, and the one factory that picks them.

A decode step is one new token per row (paths, samples, summaries of every running request). A
backend runs it end to end: inputs, attention, the model's forward (fused or modular), logits. It
also says what page layout it reads best (``side_by_side_paths``): the scheduler reads that
property, never a backend's name.

- ``ReferenceDecode``: the explicit-mask oracle (``attention.reference``).
- ``CascadeDecode``: the torch cascade (``attention.cascade``; the CPU default), fused step with the
  kernels' torch twins and oneDNN-packed GEMMs.
- ``graphs.DecodeGraphs``: static per-bucket buffers over the Triton kernel, CUDA graphs on CUDA.
"""

from __future__ import annotations

import os
from typing import Protocol

import torch

from ...errors import ConfigError
from ...model import ParaThinkerForCausalLM
from ..attention.cascade import PagedCascade
from ..attention.reference import PagedReference, build_metadata
from ..plan import Chunk, Feed, padded_inputs
from .config import DecodeConfig
from .fused import FusedDecoder


class DecodeBackend(Protocol):
    """How the runner runs decode steps (and which LM head every forward uses)."""

    name: str  # for reports: "triton", "cascade" or "reference"
    side_by_side_paths: bool  # a request's paths' own pages wanted as side-by-side blocks (read in place)
    fused: FusedDecoder | None  # the fused decode forward, if any (its LM head serves every forward)

    def decode(self, chunks: list[Chunk], feed: Feed | None = None) -> torch.Tensor:
        """Logits (len(chunks), V) float32 of one decode step (valid until the next forward)."""
        ...

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., V) float32 logits of final hidden states: the fused step's LM head when there is one."""
        ...

    def set_cache(self, cache: torch.Tensor, num_pages: int) -> None:
        """Read and write the KV pool ``cache`` of ``num_pages`` pages from now on (the pool grew)."""
        ...


def step_inputs(chunks: list[Chunk], feed: Feed | None, device: torch.device) -> tuple[torch.Tensor, ...]:
    """A decode step's ids, positions and segments (one token per chunk) on ``device``; ``feed``: the
    tokens an overlapped step samples on the device, written into ``ids`` there."""
    ids, pos, seg = (t.to(device) for t in padded_inputs(chunks, 1))
    if feed is not None:
        feed.apply(ids)
    return ids, pos, seg


class ReferenceDecode:
    """Decode steps through the explicit-mask reference backend (``--attention reference``)."""

    name = "reference"
    side_by_side_paths = False
    fused = None

    def __init__(self, model: ParaThinkerForCausalLM, cache: torch.Tensor):
        self.model, self.cache, self.device = model, cache, model.device

    def decode(self, chunks: list[Chunk], feed: Feed | None = None) -> torch.Tensor:
        dev = self.device
        ids, pos, seg = step_inputs(chunks, feed, dev)
        read = [[s for r in c.reads for s in r.slot_list] for c in chunks]
        meta = build_metadata([c.new_slots for c in chunks], read, [c.kinds for c in chunks], dev)
        hidden = self.model.hidden(ids, pos, seg, PagedReference(self.cache, meta))
        return self.logits(hidden[torch.arange(len(chunks), device=dev), 0])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.logits(hidden)

    def set_cache(self, cache: torch.Tensor, num_pages: int) -> None:
        self.cache = cache


class CascadeDecode:
    """Decode steps in torch through ``PagedCascade`` (a request's shared prompt read once for all its rows)."""

    name = "cascade"
    side_by_side_paths = True  # the cascade reads the paths' own K/V in place from side-by-side blocks

    def __init__(self, model: ParaThinkerForCausalLM, cache: torch.Tensor, fused: FusedDecoder | None):
        self.model, self.cache, self.device, self.fused = model, cache, model.device, fused
        self._head = fused or model

    def decode(self, chunks: list[Chunk], feed: Feed | None = None) -> torch.Tensor:
        dev = self.device
        ids, pos, seg = step_inputs(chunks, feed, dev)
        attn = PagedCascade.for_chunks(self.cache, chunks, dev)
        if self.fused is not None:
            return self.logits(self.fused.hidden(ids, pos, seg, attn))
        hidden = self.model.hidden(ids, pos, seg, attn)
        return self.logits(hidden[:, 0])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._head.logits(hidden)

    def set_cache(self, cache: torch.Tensor, num_pages: int) -> None:
        self.cache = cache


def build_decode_backend(model: ParaThinkerForCausalLM, cache: torch.Tensor, page_size: int, num_pages: int,
                         config: DecodeConfig) -> DecodeBackend:
    """The backend ``config`` asks for on the model's device (``auto``: Triton on CUDA when installed, else
    the torch cascade), with the fused step unless it is off or the model is a stand-in (tests)."""
    dev = model.device
    name = config.attention
    if name == "auto":
        name = "triton" if dev.type == "cuda" and _triton_available() else "cascade"
    if name == "triton" and not _triton_available():
        raise ConfigError("attention=triton needs the triton package (pip install triton)")
    if name == "triton" and dev.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError("attention=triton runs on CUDA (on the CPU only in Triton's interpreter, TRITON_INTERPRET=1: "
                          "tests); on the CPU use attention=cascade")
    if name == "reference":
        return ReferenceDecode(model, cache)
    fused = None
    if config.fused_decode and isinstance(model, ParaThinkerForCausalLM):  # stand-in models keep their own hidden()
        fused = FusedDecoder(model, use_triton=name == "triton", pack=config.packed_weights and dev.type == "cpu")
    if name == "cascade":
        return CascadeDecode(model, cache, fused)
    from .graphs import DecodeGraphs  # imported on demand: Triton reads TRITON_INTERPRET when it is imported

    return DecodeGraphs(model, cache, page_size, num_pages, config.cuda_graphs, config.max_graph_batch, fused)


def _triton_available() -> bool:
    from ..attention.triton import triton_available  # imported on demand, as above

    return triton_available()
