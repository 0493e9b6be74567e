"""Model runner: owns the model and the KV pool; turns a list of sequence chunks into one forward."""

from __future__ import annotations

import threading
from itertools import chain

import torch

from ..layout import sees
from ..model import ParaThinkerForCausalLM
from .attention.prefill import PackedPrompts, PagedCausal
from .attention.reference import PagedReference, build_metadata
from .decode.backend import DecodeBackend, build_decode_backend
from .decode.config import DecodeConfig
from .decode.fused import FusedDecoder
from .kv_cache import CacheConfig, KVCache
from .plan import Chunk, Feed, padded_inputs

MAX_MASK_ELEMENTS = 2**28  # a prefill's (rows x keys) mask stays under 1 GiB of float32; longer ones go in pieces
MAX_PREFILL_TOKENS = 16384  # prompts packed into one prefill forward, at most this many tokens together


class ModelRunner:
    """Owns the model, the KV pool and the decode backend; turns a list of ``Chunk``s into one forward."""

    def __init__(self, model: ParaThinkerForCausalLM, cache_config: CacheConfig, decode: DecodeConfig | None = None):
        decode = decode or DecodeConfig()
        self.model = model
        self.device = model.device
        self.kv = KVCache(model.config, cache_config, model.dtype, self.device)
        self.num_forwards = 0
        self._count_lock = threading.Lock()  # prompts may be prefilled on the engine's prefill thread
        # decode steps (one new token per row): one backend, picked by the factory from the config
        self.decoder: DecodeBackend = build_decode_backend(model, self.kv.data, cache_config.page_size,
                                                           self.kv.num_pages, decode)
        # multi-token chunks through SDPA's causal modes (off: the explicit-mask reference, the tests' oracle)
        self.causal_prefill = not decode.reference_prefill

    def grow_kv(self, num_pages: int) -> None:
        """Enlarge the KV pool (its pages keep their slots and contents); the decode backend reads the new tensor."""
        self.decoder.set_cache(self.kv.grow(num_pages), num_pages)

    def _count(self) -> None:
        with self._count_lock:
            self.num_forwards += 1

    @property
    def fused(self) -> FusedDecoder | None:
        """The fused decode forward, if the backend has one."""
        return self.decoder.fused

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., V) float32 logits: through the fused step's LM head when there is one (packed on the CPU)."""
        return self.decoder.logits(hidden)

    @torch.inference_mode()
    def prefill(self, chunks: list[Chunk]) -> torch.Tensor:
        """Logits (len(chunks), V) at the last token of each multi-token causal chunk (``kinds`` None): the
        prompts of admitted requests, and chunks after a context (a summary's forced opening).

        Chunks are packed into forwards of at most ``MAX_PREFILL_TOKENS`` tokens (one weight pass for
        many short chunks; attention per chunk, ``PackedPrompts``); a longer chunk, or one whose (rows x
        keys) could pass ``MAX_MASK_ELEMENTS``, goes alone (in pieces of rows, ``_forward_causal``).
        """
        out: list[torch.Tensor] = []
        batch: list[Chunk] = []

        def flush() -> None:
            if batch:
                out.append(self.forward(batch) if len(batch) == 1 or not self.causal_prefill else self._packed(batch))
                batch.clear()

        for c in chunks:
            n = len(c.tokens)
            if n * sum(r.length for r in c.reads) > MAX_MASK_ELEMENTS:
                flush()
                out.append(self.forward([c]))
                continue
            if batch and sum(len(b.tokens) for b in batch) + n > MAX_PREFILL_TOKENS:
                flush()
            batch.append(c)
        flush()
        return torch.cat(out)

    def _packed(self, chunks: list[Chunk]) -> torch.Tensor:
        dev = self.device
        lens = [len(c.tokens) for c in chunks]
        flat = [torch.tensor(list(chain.from_iterable(getattr(c, f) for c in chunks)))[None]
                for f in ("tokens", "positions", "segments")]
        slots = torch.tensor([list(chain.from_iterable(c.new_slots for c in chunks))], device=dev)
        reads = [None if sum(r.length for r in c.reads) == len(c.tokens) else  # a prompt: reads only itself
                 torch.tensor([list(chain.from_iterable(r.slot_list for r in c.reads))], device=dev) for c in chunks]
        attn = PackedPrompts(self.kv.data, slots, lens, reads)
        hidden = self.model.hidden(*(x.to(dev) for x in flat), attn)  # (1, sum(lens), D)
        self._count()
        ends = torch.tensor(lens).cumsum(0) - 1
        return self._logits(hidden[0, ends.to(dev)])

    @torch.inference_mode()
    def forward(self, chunks: list[Chunk], feed: Feed | None = None) -> torch.Tensor:
        """One batched forward; the logits (B, V) of each chunk's last token (valid until the next forward).

        ``feed``: one-token rows whose token is still on the device (their ``tokens`` are placeholders).
        """
        B, T = len(chunks), max(len(c.tokens) for c in chunks)
        decode = T == 1 and all(c.kinds is None for c in chunks)  # one new token per row, causal
        assert feed is None or decode, "fed tokens are decode inputs"
        if decode:
            self._count()
            return self.decoder.decode(chunks, feed)
        if B == 1:  # a multi-token chunk (the engine runs each alone): prompt, forced tokens, re-prefill
            c = chunks[0]
            return self._forward_packed(c) if c.kinds is not None else self._forward_causal(c)
        ids, pos, seg = padded_inputs(chunks, T)
        return self._forward_dense(chunks, ids, pos, seg)

    def _forward_dense(self, chunks: list[Chunk], ids: torch.Tensor, pos: torch.Tensor, seg: torch.Tensor,
                       read_slots: list[list[int]] | None = None) -> torch.Tensor:
        """Reference attention with an explicit mask; ``read_slots`` overrides what each row reads."""
        dev, B = self.device, len(chunks)
        if read_slots is None:
            read_slots = [list(chain.from_iterable(r.slot_list for r in c.reads)) for c in chunks]
        meta = build_metadata([c.new_slots for c in chunks], read_slots, [c.kinds for c in chunks], dev)
        attn = PagedReference(self.kv.data, meta)
        hidden = self.model.hidden(ids.to(dev), pos.to(dev), seg.to(dev), attn)
        self._count()
        lengths = torch.tensor([len(c.tokens) for c in chunks], device=dev)
        last = hidden[torch.arange(B, device=dev), lengths - 1]  # (B, D)
        return self._logits(last)

    def _forward_causal(self, c: Chunk) -> torch.Tensor:
        """A chunk that reads its context, then its own new tokens causally (a prompt, forced tokens).

        In pieces of rows when long, so that no piece's (rows x keys) could pass MAX_MASK_ELEMENTS
        (where SDPA has no kernel for the causal pattern it materialises one): piece [a, b) writes its
        K/V and reads the context plus the chunk's tokens up to b (a prefix of the read list).
        """
        slots = list(chain.from_iterable(r.slot_list for r in c.reads))
        n = len(c.tokens)
        ctx = len(slots) - n
        rows = max(1, MAX_MASK_ELEMENTS // len(slots))
        for a in range(0, n, rows):
            b = min(n, a + rows)
            logits = self._forward_piece(c, a, b, slots[: ctx + b], None)
        return logits

    def _forward_packed(self, c: Chunk) -> torch.Tensor:
        """A re-prefill (prompt | paths | summary packed, ``c.kinds`` per new token): segment by segment.

        Each run of tokens of one kind (the prompt, a path, the summary) reads only the keys the
        layout lets that kind see (``layout.sees``: the prompt and itself; the summary everything),
        so a path never pays for the other paths' keys: attention work ~ P x L x (prompt + L), not
        (P x L)^2, and no mask exceeds MAX_MASK_ELEMENTS (long segments go in pieces of rows).
        """
        assert c.kinds is not None and len(c.kinds) == len(c.tokens), "a packed chunk has one kind per new token"
        slots = torch.tensor(list(chain.from_iterable(r.slot_list for r in c.reads)))
        n, kinds = len(c.tokens), c.kinds.cpu()
        ctx = len(slots) - n
        starts = [0, *(torch.nonzero(kinds[1:] != kinds[:-1])[:, 0] + 1).tolist(), n]
        for a, e in zip(starts, starts[1:]):
            kind = int(kinds[a])
            seen = sees(kind, kinds[:e])  # keys of the packed sequence this segment may read (up to its end)
            rows = max(1, MAX_MASK_ELEMENTS // (ctx + int(seen.sum())))
            for pa in range(a, e, rows):
                b = min(e, pa + rows)
                sel = torch.nonzero(seen[:b])[:, 0]  # ascending; the piece's own tokens are its last entries
                read = torch.cat([slots[:ctx], slots[ctx + sel]]).tolist()
                logits = self._forward_piece(c, pa, b, read, kinds[sel])
        return logits

    def _forward_piece(self, c: Chunk, a: int, b: int, read: list[int], kinds: torch.Tensor | None) -> torch.Tensor:
        """New tokens [a, b) of ``c`` reading ``read`` (ending with them), every key visible causally.

        ``PagedCausal`` (SDPA's causal modes, no mask tensor) unless ``causal_prefill`` is off: then
        the reference backend with an explicit mask (``kinds``: the layout kinds of read's last keys).
        """
        t = [torch.tensor(x[a:b])[None] for x in (c.tokens, c.positions, c.segments)]
        if not self.causal_prefill:
            piece = Chunk(c.tokens[a:b], c.positions[a:b], c.segments[a:b], c.new_slots[a:b], c.reads, kinds)
            return self._forward_dense([piece], *t, read_slots=[read])
        dev = self.device
        fresh = len(read) == b - a  # reads nothing but these tokens (a prompt): attend to the k', v' just made
        attn = PagedCausal(self.kv.data, torch.tensor([c.new_slots[a:b]], device=dev),
                           None if fresh else torch.tensor([read], device=dev))
        self._count()
        return self._logits(self.model.hidden(*(x.to(dev) for x in t), attn)[:, -1])
