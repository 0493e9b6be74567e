"""THE ParaThinker sequence layout: positions, segment ids, who-sees-whom and labels.

    prompt | <think a> path_1 </think a> | ... | <think z> path_P </think z> | <summary> summary </summary>

Both the trainer (which packs whole examples) and the engine (which decodes them piece by
piece over a paged KV cache) take every position and segment id from this module, so
training and inference cannot disagree. Rules (see shared PARATHINKER.md):

- positions: prompt 0..L-1; token t of every path (t=0 is its ``<think i>``) at L + t, so all
  paths share one range; the summary starts at L + max_i len_i (len_i counts both control
  tokens). Ablation ``flat_positions``: path k (0-based order) at L + k*stride + t and the
  summary at L + P*stride, stride = the longest path.
- segment ids: prompt 0, path with think index i -> i, summary 0. Ablation
  ``thought_embeddings=False``: all 0 (the model then adds nothing).
- visibility: prompt causal; a path token sees the prompt and the earlier tokens of its own
  path; a summary token sees everything before it.
- labels are *next-token targets aligned with the inputs*: ``labels[k]`` is the token that
  the logits at ``k`` must predict, or IGNORE_INDEX. A packed sequence is not one causal
  stream, so the usual shift-by-one would make a path's end predict the next path's
  ``<think i>``. Loss falls on path bodies, path end tokens and the summary after
  ``<summary>``; never on the prompt or the forced ``<think i>``/``<summary>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import ConfigError
from .tokens import ControlTokens

IGNORE_INDEX = -100
PROMPT = 0  # segment kind of the prompt
SUMMARY = -1  # segment kind of the summary (kinds of paths are 1..P, their order in the sequence)


@dataclass(frozen=True)
class LayoutConfig:
    """Switches for the paper's ablations; the defaults are the ParaThinker layout."""

    flat_positions: bool = False
    thought_embeddings: bool = True
    # flat positions only: the slot each path gets. None = the longest path of the example when
    # packing, the path budget + 2 in the engine. Set it to the engine's max_path_tokens + 2 when
    # training the ablation, so training and inference space paths alike.
    flat_stride: int | None = None

    def path_position(self, prompt_len: int, order: int, t: int, stride: int) -> int:
        """RoPE position of token ``t`` of the path at 0-based ``order`` in the sequence."""
        if self.flat_positions:
            return prompt_len + order * stride + t
        return prompt_len + t

    def summary_position(self, prompt_len: int, path_lens: Sequence[int], s: int = 0, stride: int = 0) -> int:
        """RoPE position of summary token ``s`` (s=0 is ``<summary>``).

        ``path_lens`` count ``<think i>`` through ``</think i>``; ``stride`` is only used with
        flat positions (the training packer passes the longest path, the engine its budget).
        """
        if self.flat_positions:
            return prompt_len + len(path_lens) * max(stride, max(path_lens, default=0)) + s
        return prompt_len + max(path_lens, default=0) + s

    def segment(self, think_index: int) -> int:
        """Segment id of a path opened by ``<think think_index>`` (0 for prompt and summary)."""
        return think_index if self.thought_embeddings else 0


@dataclass
class PackedSequence:
    """One example laid out flat, with everything the model and the loss need."""

    input_ids: list[int]
    positions: list[int]
    segment_ids: list[int]
    labels: list[int]
    kinds: list[int]  # PROMPT, 1..P (path order), or SUMMARY, per token
    prompt_len: int
    path_spans: list[tuple[int, int]]  # [start, end) of each path, control tokens included
    summary_span: tuple[int, int] | None
    think_indices: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    def visibility(self) -> torch.Tensor:
        """``[T, T]`` bool, True where query (row) may attend to key (column)."""
        return visibility_from_kinds(self.kinds)


def visibility_from_kinds(kinds: Sequence[int]) -> torch.Tensor:
    """The two-phase mask from per-token kinds: causal, and paths blind to other paths."""
    k = torch.as_tensor(list(kinds), dtype=torch.long)
    return visibility_rows(k, 0, k.numel())


def visibility_rows(kinds: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of ``visibility_from_kinds(kinds)`` over keys ``0:stop``: ``[stop - start, stop]`` bool.

    On ``kinds``' device; a long sequence's mask is built a block of rows at a time, never ``[T, T]``.
    """
    k = kinds[:stop]
    q = kinds[start:stop, None]
    causal = torch.arange(stop, device=kinds.device)[None, :] <= torch.arange(start, stop, device=kinds.device)[:, None]
    return causal & sees(q, k[None, :])


def sees(query_kind: torch.Tensor | int, key_kind: torch.Tensor) -> torch.Tensor:
    """The two-phase rule apart from causality: the prompt is seen by all, the summary sees all, a path itself."""
    return (key_kind == PROMPT) | (query_kind == SUMMARY) | (query_kind == key_kind)


def attention_bias(visible: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Float additive mask (0 where visible, dtype min elsewhere): works in HF eager and SDPA alike."""
    bias = torch.zeros(visible.shape, dtype=dtype)
    return bias.masked_fill_(~visible, torch.finfo(dtype).min)


def pack(
    prompt_ids: Sequence[int],
    path_bodies: Sequence[Sequence[int]],
    summary_body: Sequence[int] | None,
    tokens: ControlTokens,
    *,
    think_indices: Sequence[int] | None = None,
    config: LayoutConfig = LayoutConfig(),
    close_summary: bool = True,
    prompt_loss: bool = False,
) -> PackedSequence:
    """Lay out ``prompt | paths | summary`` for a forward pass over the whole example.

    ``path_bodies`` are the tokens between ``<think i>`` and ``</think i>``; the control tokens
    are added here. ``think_indices`` (default 1..P) choose which ``<think i>`` each path gets,
    so training can relabel paths to reach every index up to the tokenizer's maximum.
    ``summary_body=None`` packs the thinking part only (the engine's re-prefill of a
    summary-less sequence uses that).
    """
    num_paths = len(path_bodies)
    if num_paths < 1:
        raise ConfigError("a ParaThinker sequence needs at least one path")
    idx = list(think_indices) if think_indices is not None else list(range(1, num_paths + 1))
    if len(idx) != num_paths:
        raise ConfigError(f"{num_paths} paths but {len(idx)} think indices")
    if len(set(idx)) != len(idx) or min(idx) < 1 or max(idx) > tokens.max_paths:
        raise ConfigError(
            f"think indices must be distinct and within 1..{tokens.max_paths} (the tokenizer's "
            f"<think1>..<think{tokens.max_paths}>), got {idx}"
        )
    L = len(prompt_ids)
    ids: list[int] = list(prompt_ids)
    pos = list(range(L))
    seg = [0] * L
    kinds = [PROMPT] * L
    labels = (list(prompt_ids[1:]) if prompt_loss else [IGNORE_INDEX] * max(L - 1, 0)) + [IGNORE_INDEX] * min(L, 1)

    paths = [[tokens.think_open[i - 1], *body, tokens.think_close[i - 1]] for i, body in zip(idx, path_bodies)]
    lens = [len(p) for p in paths]
    stride = config.flat_stride or max(lens)
    if config.flat_positions and stride < max(lens):
        raise ConfigError(f"flat_stride={stride} is shorter than a path of {max(lens)} tokens")
    spans: list[tuple[int, int]] = []
    for order, (i, p) in enumerate(zip(idx, paths)):
        spans.append((len(ids), len(ids) + len(p)))
        ids += p
        pos += [config.path_position(L, order, t, stride) for t in range(len(p))]
        seg += [config.segment(i)] * len(p)
        kinds += [order + 1] * len(p)
        labels += list(p[1:]) + [IGNORE_INDEX]

    summary_span = None
    if summary_body is not None:
        s = [tokens.summary_open, *summary_body] + ([tokens.summary_close] if close_summary else [])
        summary_span = (len(ids), len(ids) + len(s))
        ids += s
        pos += [config.summary_position(L, lens, j, stride) for j in range(len(s))]
        seg += [0] * len(s)
        kinds += [SUMMARY] * len(s)
        labels += list(s[1:]) + [IGNORE_INDEX]

    return PackedSequence(ids, pos, seg, labels, kinds, L, spans, summary_span, idx)
