"""From validated records to padded training batches, through ``parathinker.layout.pack``.

Per example and epoch (seeded by ``seed:epoch:index``, so any process, worker or resumed run
draws the same): a subset of the record's paths (all of them unless ``min_paths`` is set), in
random order, given think indices drawn from 1..N (N = the tokenizer's ``<thinkN>``) and sorted so
the sequence order follows the index order, as at inference. This generalises the paper's
relabelling (paths 7 and 8 in 30% of batches): every ``<think i>`` and thought-embedding row up to
N gets trained.

Truncation policy for examples longer than ``max_length`` (counted, logged, never silent):
1. drop paths from the end of the drawn order until the example fits or one path is left;
2. then cut the body of the remaining longest path from its end; it keeps its ``</think i>`` in
   the sequence (the summary sees a closed path, as under First-Finish) but gets no loss on it
   (the model should not learn to stop mid-thought).
Examples whose prompt plus summary alone do not fit are skipped when the dataset is built,
with their ids logged.

``sequential`` (the paper's "data without architecture" control): prompt + one drawn path +
``</think>`` separator + summary + EOS as one causal stream, loss on everything after the prompt;
over-long examples lose the end of the path.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConfigError
from ..layout import IGNORE_INDEX, PROMPT, SUMMARY, LayoutConfig, PackedSequence, pack
from ..tokens import ControlTokens
from .data import Record

log = logging.getLogger(__name__)

PAD_KIND = -2  # kind of padding tokens (see PackedSequence.kinds for the others)
STATS = ("truncated", "dropped_paths", "cut_tokens")  # per-example counters carried in each batch


@dataclass(frozen=True)
class PackConfig:
    """How records become sequences. Fields are CLI flags of `parathinker train`."""

    max_length: int = field(default=28672, metadata={"help": "longest packed example in tokens"})
    min_paths: int = field(
        default=0, metadata={"help": "0: every path of an example; k: a random number of paths in k..all"}
    )
    relabel_prob: float = field(
        default=1.0, metadata={"help": "chance an example gets random think indices from 1..N (else 1..k)"}
    )
    flat_positions: bool = field(default=False, metadata={"help": "ablation: path k at L + k*stride + t"})
    flat_stride: int | None = field(
        default=None,
        metadata={"help": "with --flat-positions: stride per path; use the inference max_path_tokens + 2 "
                          "(default: the example's longest path)"},
    )
    thought_embeddings: bool = field(
        default=True, metadata={"help": "ablation: --no-thought-embeddings sets segment ids to 0 and freezes the tables"}
    )
    sequential: bool = field(default=False, metadata={"help": "ablation: plain SFT on one path + summary"})

    def __post_init__(self) -> None:
        if self.max_length < 8:
            raise ConfigError(f"max_length must be >= 8, got {self.max_length}")
        if self.min_paths < 0:
            raise ConfigError(f"min_paths must be >= 0 (0 = all paths), got {self.min_paths}")
        if not 0.0 <= self.relabel_prob <= 1.0:
            raise ConfigError(f"relabel_prob must be in [0, 1], got {self.relabel_prob}")

    @property
    def layout(self) -> LayoutConfig:
        return LayoutConfig(self.flat_positions, self.thought_embeddings, self.flat_stride)


@dataclass
class Encoded:
    """A record's token ids (int32 arrays keep memory at 4 bytes a token)."""

    id: str
    prompt: np.ndarray
    paths: list[np.ndarray]
    summary: np.ndarray


def _ids(x: Sequence[int]) -> np.ndarray:
    return np.asarray(x, dtype=np.int32)


def prompt_ids(tokenizer, record: Record, style=None, raw: bool = False) -> list[int]:  # noqa: ANN001
    """The prompt's token ids, formatted exactly as the engine formats a question (or chat messages)."""
    from ..prompting import encode_prompt

    prompt = record.prompt if record.prompt is not None else list(record.messages or ())
    return encode_prompt(tokenizer, prompt, style, raw)


def encode_records(records: Sequence[Record], tokenizer, style=None, raw: bool = False) -> list[Encoded]:  # noqa: ANN001
    """Tokenize prompts, paths and summaries (bodies without special tokens)."""
    out = []
    for r in records:
        bodies = tokenizer(list(r.paths) + [r.summary], add_special_tokens=False)["input_ids"]
        out.append(Encoded(r.id, _ids(prompt_ids(tokenizer, r, style, raw)), [_ids(b) for b in bodies[:-1]], _ids(bodies[-1])))
    return out


def sequential_separator(tokenizer) -> list[int]:  # noqa: ANN001
    """Tokens between the path and the summary in the sequential control: close the think block."""
    text = "\n</think>\n\n" if "</think>" in tokenizer.get_vocab() else "\n\n"
    return list(tokenizer.encode(text, add_special_tokens=False))


def min_length(enc: Encoded, cfg: PackConfig, sep_len: int = 0) -> int:
    """Shortest sequence an example can be cut to (prompt + summary + an empty path)."""
    if cfg.sequential:
        return len(enc.prompt) + sep_len + len(enc.summary) + 1
    return len(enc.prompt) + 2 + len(enc.summary) + 2


def full_length(enc: Encoded, cfg: PackConfig, sep_len: int = 0) -> int:
    """Length with every path (layout) or the longest path (sequential)."""
    lens = [len(p) for p in enc.paths]
    if cfg.sequential:
        return min_length(enc, cfg, sep_len) + max(lens)
    return len(enc.prompt) + sum(n + 2 for n in lens) + len(enc.summary) + 2


def pack_example(
    enc: Encoded,
    tokens: ControlTokens,
    cfg: PackConfig,
    rng: random.Random,
    *,
    sep_ids: Sequence[int] = (),
    eos_id: int | None = None,
) -> tuple[PackedSequence, tuple[int, int, int]]:
    """Draw paths and indices, apply the truncation policy, lay the example out.

    Returns the packed sequence and the counters ``(truncated, dropped_paths, cut_tokens)``.
    """
    if cfg.sequential:
        return _pack_sequential(enc, cfg, rng, sep_ids, eos_id)
    n_avail = len(enc.paths)
    n_max = tokens.max_paths
    if n_avail > n_max:
        raise ConfigError(f"example {enc.id!r} has {n_avail} paths but the tokenizer only <think1>..<think{n_max}>")
    k = n_avail if cfg.min_paths == 0 else rng.randint(min(cfg.min_paths, n_avail), n_avail)
    order = rng.sample(range(n_avail), k)
    if rng.random() < cfg.relabel_prob:
        idx = sorted(rng.sample(range(1, n_max + 1), k))
    else:
        idx = list(range(1, k + 1))
    bodies = [enc.paths[j].tolist() for j in order]

    fixed = len(enc.prompt) + len(enc.summary) + 2
    total = fixed + sum(len(b) + 2 for b in bodies)
    dropped = cut = 0
    while total > cfg.max_length and len(bodies) > 1:
        total -= len(bodies.pop()) + 2
        idx.pop()
        dropped += 1
    cut_path = None
    if total > cfg.max_length:
        cut_path = max(range(len(bodies)), key=lambda j: len(bodies[j]))
        cut = total - cfg.max_length
        bodies[cut_path] = bodies[cut_path][: len(bodies[cut_path]) - cut]
    seq = pack(enc.prompt.tolist(), bodies, enc.summary.tolist(), tokens, think_indices=idx, config=cfg.layout)
    if cut_path is not None:
        end = seq.path_spans[cut_path][1]
        seq.labels[end - 2] = IGNORE_INDEX  # no loss on the artificial </think i>
    return seq, (int(dropped > 0 or cut > 0), dropped, cut)


def _pack_sequential(enc, cfg, rng, sep_ids, eos_id) -> tuple[PackedSequence, tuple[int, int, int]]:  # noqa: ANN001
    path = enc.paths[rng.randrange(len(enc.paths))].tolist()
    tail = [*sep_ids, *enc.summary.tolist()] + ([eos_id] if eos_id is not None else [])
    L = len(enc.prompt)
    cut = max(0, L + len(path) + len(tail) - cfg.max_length)
    if cut:
        path = path[: len(path) - cut]
    ids = enc.prompt.tolist() + path + tail
    n = len(ids)
    labels = [IGNORE_INDEX] * max(L - 1, 0) + ids[L:] + [IGNORE_INDEX]
    seq = PackedSequence(
        input_ids=ids, positions=list(range(n)), segment_ids=[0] * n, labels=labels[:n], kinds=[PROMPT] * n,
        prompt_len=L, path_spans=[(L, n)], summary_span=None, think_indices=[],
    )
    return seq, (int(cut > 0), 0, cut)


class MultiPathDataset(torch.utils.data.Dataset):
    """Encoded examples, packed on access with an RNG seeded by (seed, epoch, index)."""

    def __init__(
        self,
        encoded: Sequence[Encoded],
        tokens: ControlTokens,
        cfg: PackConfig,
        *,
        seed: int = 0,
        sep_ids: Sequence[int] = (),
        eos_id: int | None = None,
    ):
        self.cfg, self.tokens, self.seed = cfg, tokens, seed
        self.sep_ids, self.eos_id = list(sep_ids), eos_id
        self.epoch = 0
        keep, skipped = [], []
        for e in encoded:
            (keep if min_length(e, cfg, len(sep_ids)) <= cfg.max_length else skipped).append(e)
        self.examples = keep
        self.skipped_ids = [e.id for e in skipped]
        self.over_length = sum(full_length(e, cfg, len(sep_ids)) > cfg.max_length for e in keep)
        if skipped:
            log.warning(
                "skipped %d of %d examples whose prompt + summary exceed max_length %d: %s%s",
                len(skipped), len(encoded), cfg.max_length, ", ".join(self.skipped_ids[:10]),
                " ..." if len(skipped) > 10 else "",
            )
        if self.over_length:
            log.warning(
                "%d of %d examples exceed max_length %d with all their paths; they are truncated "
                "(paths dropped from the end, then the longest path cut); counts are in the metrics log",
                self.over_length, len(keep), cfg.max_length,
            )
        if not keep:
            raise ConfigError(f"no example fits in max_length {cfg.max_length}")

    def __len__(self) -> int:
        return len(self.examples)

    def set_epoch(self, epoch: int) -> None:
        """Called by accelerate's data loader at each epoch: a new draw of paths and indices."""
        self.epoch = int(epoch)

    def __getitem__(self, i: int) -> dict:
        # An index from EpochSampler carries its epoch (epoch * len + i): no state to keep in sync
        # across processes and workers. Plain indices use the epoch from set_epoch.
        epoch, i = divmod(i, len(self.examples)) if i >= len(self.examples) else (self.epoch, i)
        rng = random.Random(f"{self.seed}:{epoch}:{i}")  # str seeds hash with sha512: stable everywhere
        seq, stats = pack_example(
            self.examples[i], self.tokens, self.cfg, rng, sep_ids=self.sep_ids, eos_id=self.eos_id
        )
        return {
            "input_ids": seq.input_ids, "positions": seq.positions, "segment_ids": seq.segment_ids,
            "labels": seq.labels, "kinds": seq.kinds, "stats": stats,
        }


class EpochSampler(torch.utils.data.Sampler):
    """A seeded shuffle per epoch that tags each index with its epoch (``epoch * n + i``).

    The launcher calls ``set_epoch`` on the sampler reliably (accelerate forwards it to the sampler
    inside its sharded batch samplers, but then not to the dataset), so the epoch travels with
    the index to ``MultiPathDataset.__getitem__``.
    """

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        base = self.epoch * self.n
        return iter((base + torch.randperm(self.n, generator=g)).tolist())


def _visible(q_idx: torch.Tensor, k_idx: torch.Tensor, q_kind: torch.Tensor, k_kind: torch.Tensor) -> torch.Tensor:
    """Who sees whom, from indices and kinds (broadcasting; also FlexAttention's ``mask_mod``).

    ``layout.visibility_from_kinds`` on real tokens (causal, and key is prompt | query is summary |
    same kind); padding keys hidden from everyone; a padding query sees only itself (a row with no
    visible key would give NaN in the dense path).
    """
    real = (q_idx >= k_idx) & ((k_kind == PROMPT) | (q_kind == SUMMARY) | (q_kind == k_kind)) & (k_kind != PAD_KIND)
    pad = q_idx == k_idx
    return ((q_kind != PAD_KIND) & real) | ((q_kind == PAD_KIND) & pad)


def batch_visibility(kinds: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` kinds (PAD_KIND for padding) -> ``[B, T, T]`` bool visibility (see ``_visible``)."""
    i = torch.arange(kinds.shape[1], device=kinds.device)
    return _visible(i[:, None], i[None, :], kinds[:, :, None], kinds[:, None, :])


def batch_block_mask(kinds: torch.Tensor, block_size: int = 128, rows_per_chunk: int = 2048):  # noqa: ANN201
    """``[B, T]`` kinds -> a FlexAttention ``BlockMask`` with exactly ``batch_visibility``'s pattern.

    Built without a dense ``[B, T, T]`` tensor: the visibility is evaluated ``rows_per_chunk``
    queries at a time and reduced to per-block "partial" / "full" flags (full blocks skip the
    ``mask_mod`` in the kernel; hidden blocks are skipped altogether: paths never read other paths).
    Peak extra memory ~ B * rows_per_chunk * T bools, whatever T is.
    """
    from torch.nn.attention.flex_attention import BlockMask

    B, T = kinds.shape
    bs = block_size
    nb = -(-T // bs)
    # kinds padded to whole blocks, so the kernel's mask_mod never indexes past the end
    padded = torch.full((B, nb * bs), PAD_KIND, dtype=kinds.dtype, device=kinds.device)
    padded[:, :T] = kinds
    idx = torch.arange(nb * bs, device=kinds.device)
    real = idx < T
    rows = max(bs, rows_per_chunk // bs * bs)
    partial, full = [], []
    for r0 in range(0, nb * bs, rows):
        qi = idx[r0 : r0 + rows]
        vis = _visible(qi[:, None], idx[None, :], padded[:, r0 : r0 + rows, None], padded[:, None, :])
        vis &= real[r0 : r0 + rows, None] & real[None, :]  # as create_block_mask: out-of-range is hidden
        n = vis.view(B, -1, bs, nb, bs).sum(dim=(2, 4), dtype=torch.int32)  # (B, q blocks, kv blocks)
        full.append(n == bs * bs)
        partial.append((n > 0) & (n < bs * bs))

    def ordered(blocks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        m = torch.cat(blocks, 1)[:, None].to(torch.int32)  # (B, 1, q blocks, kv blocks)
        order = torch.argsort(m, dim=-1, descending=True, stable=True)  # listed blocks first, ascending
        return m.sum(-1, dtype=torch.int32), order.to(torch.int32)

    def mask_mod(b, h, q_idx, kv_idx):  # noqa: ANN001, ANN202 - flex_attention's signature
        return _visible(q_idx, kv_idx, padded[b, q_idx], padded[b, kv_idx])

    kv_num, kv_idx = ordered(partial)
    full_num, full_idx = ordered(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=bs, mask_mod=mask_mod,
                                    seq_lengths=(T, T))


def batch_bias(kinds: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[B, 1, T, T]`` additive mask (0 visible, dtype min hidden) for the model's dense path."""
    vis = batch_visibility(kinds)[:, None]
    return torch.zeros(vis.shape, dtype=dtype, device=kinds.device).masked_fill_(~vis, torch.finfo(dtype).min)


@dataclass
class Collator:
    """Right-pads examples into ``[B, T]`` tensors.

    ``dense_mask=True`` adds ``attn_bias`` ``[B, 1, T, T]``; the trainer sets it False and builds
    the mask on the device from ``kinds`` instead (B*T*T floats are the biggest thing in a batch).
    """

    pad_id: int
    pad_to_multiple_of: int = 1
    dense_mask: bool = True
    mask_dtype: torch.dtype = torch.float32

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        m = max(1, self.pad_to_multiple_of)
        T = -(-longest // m) * m
        B = len(features)
        pads = {"input_ids": self.pad_id, "positions": 0, "segment_ids": 0, "labels": IGNORE_INDEX, "kinds": PAD_KIND}
        out = {key: torch.full((B, T), value, dtype=torch.long) for key, value in pads.items()}
        for b, f in enumerate(features):
            n = len(f["input_ids"])
            for key in pads:
                out[key][b, :n] = torch.as_tensor(f[key], dtype=torch.long)
        out["stats"] = torch.tensor([f.get("stats", (0, 0, 0)) for f in features], dtype=torch.long)
        if self.dense_mask:
            out["attn_bias"] = batch_bias(out["kinds"], self.mask_dtype)
        return out
