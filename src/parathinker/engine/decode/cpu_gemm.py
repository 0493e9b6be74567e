"""CPU GEMMs over weights packed once for oneDNN: the decode step's projections and LM head.

On the CPU ``F.linear`` runs MKL's sgemm, which re-lays-out the weight on every call. With the few
rows of a decode step that costs more than the multiply itself: on SmolLM2-135M (fp32, one thread)
the step's GEMMs take 1.6x longer at 8 rows than at 1 (91.5 vs 58.9 ms). oneDNN's linear over a weight reordered
once into its blocked layout (``mkldnn._reorder_linear_weight`` / ``_linear_pointwise``, the ops
PyTorch's own compiler uses when it freezes a CPU model) makes 8 rows cost about what 1 costs.
Measured in ``benchmarks/cpu_gemm.py`` and ``docs/performance.md``.

The packed copy is a second copy of those weights (the dense ones stay: prefill, scoring and
training read them), so it is made only when it fits in a quarter of the free memory. Where the ops
are missing or wrong (another torch, fp16 without AVX512-FP16), ``packing_problem`` says why and the
step keeps ``F.linear``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

PACK_ROWS = 8  # the row count oneDNN tunes the packed layout for (any row count works with it)
MEMORY_SHARE = 0.25  # pack only when the copy takes at most this share of the free memory

Linear = Callable[[torch.Tensor], torch.Tensor]


class PackedLinear:
    """``F.linear(x, weight, bias)`` through a oneDNN-packed copy of ``weight`` (CPU).

    ``sources``: the parameters ``weight``/``bias`` were made from (q, k, v for a fused q|k|v). An
    in-place edit of any of them (``load_state_dict``, ``weight[...] *= 0``) bumps its version, and the
    next call packs again, so the copy never goes stale.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, sources: Sequence[torch.Tensor] = ()):
        self.weight, self.bias = weight.detach(), None if bias is None else bias.detach()
        self.sources = list(sources) or [t for t in (weight, bias) if t is not None]
        self._pack()

    def _stamp(self) -> tuple[int, ...]:
        return tuple(0 if t.is_inference() else t._version for t in self.sources)  # inference tensors have none

    def _pack(self) -> None:
        self.stamp = self._stamp()
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, PACK_ROWS)

    def refresh(self) -> None:
        """Pack again if a source changed since the last packing."""
        if self._stamp() != self.stamp:
            self._pack()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.refresh()
        return self.run(x)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The GEMM without the staleness check (a caller that checked ``refresh`` once for many calls)."""
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def dense(weight: torch.Tensor, bias: torch.Tensor | None = None, sources: Sequence[torch.Tensor] = ()) -> Linear:
    """``F.linear`` over the weight as it is. ``sources`` is not needed: the weight shares the parameters'
    storage, so edits show at once."""
    return lambda x: F.linear(x, weight, bias)


def available_memory() -> int | None:
    """Bytes of memory the OS can give without swapping (Linux ``MemAvailable``); None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def packing_problem(weights: Iterable[torch.Tensor]) -> str | None:
    """Why these weights should not be packed here (None: pack them)."""
    weights = list(weights)
    w = weights[0]
    if w.device.type != "cpu":
        return f"weights on {w.device.type}"
    nbytes = sum(x.numel() * x.element_size() for x in weights)
    free = available_memory()
    if free is None and nbytes > 2**30:
        return f"a packed copy takes {nbytes / 2**30:.1f} GiB and the free memory is unknown"
    if free is not None and nbytes > MEMORY_SHARE * free:
        return f"a packed copy takes {nbytes / 2**30:.2f} GiB, more than {MEMORY_SHARE:.0%} of the free {free / 2**30:.1f} GiB"
    return _self_check(w)


def _self_check(weight: torch.Tensor) -> str | None:
    """None if the packed GEMM runs and matches ``F.linear`` on this weight's shape and dtype."""
    try:
        g = torch.Generator().manual_seed(0)
        w = torch.randn(weight.shape, generator=g).to(weight.dtype)
        x = torch.randn(3, weight.shape[1], generator=g).to(weight.dtype)
        got, want = PackedLinear(w, None)(x).float(), F.linear(x, w).float()
    except (RuntimeError, AttributeError, NotImplementedError) as e:
        return f"oneDNN packed GEMM unavailable ({str(e).splitlines()[0][:120]})"
    tol = 1e-3 if weight.dtype == torch.float32 else 5e-2
    err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-6)).item()
    if not err <= tol:  # also catches NaN
        return f"oneDNN packed GEMM disagrees with F.linear (relative error {err:.1e})"
    return None
