"""Model runner: owns the model and the KV pool; turns a list of sequence chunks into one forward."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import torch

from ..model import ParaThinkerForCausalLM
from .attention import PagedCascade, PagedReference, build_metadata, triton_available
from .block_manager import Run
from .kv_cache import CacheConfig, KVCache


@dataclass
class Chunk:
    """New tokens of one sequence for one forward. Their slots are already allocated (end of the last run)."""

    tokens: list[int]
    positions: list[int]
    segments: list[int]
    new_slots: list[int]
    reads: list[Run]  # the runs it reads, in order; its own run (holding the new tokens) last
    visibility: torch.Tensor | None = None  # (n, n) bool among the new tokens; None = causal
    shared_prefix: bool = False  # reads[0] is a prompt run its sibling sequences read too


class ModelRunner:
    def __init__(self, model: ParaThinkerForCausalLM, cache_config: CacheConfig):
        self.model = model
        self.device = model.device
        self.kv = KVCache(model.config, cache_config, model.dtype, self.device)
        self.num_forwards = 0
        self.decode_backend = resolve_backend(cache_config.attention, self.device)
        self.decoder = None  # decode steps through static per-bucket buffers (CUDA graphs on CUDA)
        if self.decode_backend == "triton":
            from .graph_runner import DecodeGraphs

            self.decoder = DecodeGraphs(model, self.kv.data, cache_config.page_size, self.kv.num_pages,
                                        cache_config.cuda_graphs, cache_config.max_graph_batch)

    @torch.inference_mode()
    def forward(self, chunks: list[Chunk]) -> torch.Tensor:
        """One batched forward; the logits (B, V) of each chunk's last token (valid until the next forward)."""
        B, T = len(chunks), max(len(c.tokens) for c in chunks)
        decode = T == 1 and all(c.visibility is None for c in chunks)  # one new token per row, causal
        if self.decoder is not None and decode:
            self.num_forwards += 1
            return self.decoder.run(chunks)
        ids = torch.zeros(B, T, dtype=torch.long)
        pos = torch.zeros(B, T, dtype=torch.long)
        seg = torch.zeros(B, T, dtype=torch.long)
        for b, c in enumerate(chunks):
            n = len(c.tokens)
            ids[b, :n] = torch.tensor(c.tokens)
            pos[b, :n] = torch.tensor(c.positions)
            seg[b, :n] = torch.tensor(c.segments)
        dev = self.device
        if self.decode_backend == "cascade" and decode:
            attn = PagedCascade.for_chunks(self.kv.data, chunks, dev)
            hidden = self.model.hidden(ids.to(dev), pos.to(dev), seg.to(dev), attn)
            self.num_forwards += 1
            return self.model.logits(hidden[:, 0])
        meta = build_metadata(
            [c.new_slots for c in chunks],
            [chain.from_iterable(r.slot_list for r in c.reads) for c in chunks],
            [c.visibility for c in chunks],
            dev,
            read_lens=[sum(r.length for r in c.reads) for c in chunks],
        )
        attn = PagedReference(self.kv.data, meta)
        hidden = self.model.hidden(ids.to(dev), pos.to(dev), seg.to(dev), attn)
        self.num_forwards += 1
        lengths = torch.tensor([len(c.tokens) for c in chunks], device=dev)
        last = hidden[torch.arange(B, device=dev), lengths - 1]  # (B, D)
        return self.model.logits(last)


def resolve_backend(name: str, device: torch.device) -> str:
    """``auto``: the Triton decode kernel on CUDA when Triton is installed, else the torch cascade."""
    if name == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "cascade"
    if name == "triton" and not triton_available():
        from ..errors import ConfigError

        raise ConfigError("--attention triton needs the triton package (pip install triton)")
    return name
